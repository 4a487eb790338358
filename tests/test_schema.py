"""The study schema: each section's field types are what loading checks (pydantic, strict) and what the messages say."""

import dataclasses

import pytest

from data_pipeline import schema
from search.study.spec import SECTIONS, SpecError, TrialConfig, axis_value_problem, load_study


def test_every_field_of_every_section_is_checked_by_its_declared_type_and_all_are_named_at_once():
    """A value of no field's kind (a mapping) in every field of every section: one load names every one of them,
    each with what its declaration allows; the defaults all pass."""
    for key, cls in SECTIONS.items():
        fields = [f.name for f in dataclasses.fields(cls) if f.name != "task"]  # data.task: the study's
        assert schema.read(cls, {}, key) == (cls(), [])
        everything_wrong = {name: {"not": "a value"} for name in fields}
        _, problems = schema.read(cls, everything_wrong, key)
        expected = [
            f"{key}.{name}: {{'not': 'a value'}} must be {schema.rule(schema.hints(cls)[name])}" for name in fields
        ]
        assert problems == expected
        allowed = ", ".join(f.name for f in dataclasses.fields(cls))
        _, problems = schema.read(cls, {"typo": 1, 1: "a key YAML reads as a number", False: "or as `off:`"}, key)
        assert problems == [f"{key}.{k}: unknown key; allowed: {allowed}" for k in (1, False, "typo")]


def test_strict_values_as_yaml_and_json_write_them():
    import yaml

    from search.study.spec import Resources, Train

    written = yaml.safe_load("epochs: 5\nweight_decay: 0.0001\nlr_schedule: cosine\nloss: null\nfreeze_backbone: yes")
    assert schema.read(Train, written, "train")[1] == []  # YAML's own numbers, null and yes
    _, problems = schema.read(Train, yaml.safe_load("weight_decay: 1e-4"), "train")
    assert problems == [  # YAML 1.1 reads 1e-4 as text: the message says so
        "train.weight_decay: '1e-4' must be a number in [0, 1) (YAML reads 1e-4 as text: write 1.0e-4)"
    ]
    dated, problems = schema.read(Train, yaml.safe_load("weights: 2024-01-01"), "train")
    assert problems == [] and dated.weights == "2024-01-01"  # what JSON cannot hold (a YAML date) is its text

    train, problems = schema.read(Train, {"epochs": 3, "weight_decay": 0, "batch_size": 8}, "train")
    assert problems == [] and train.weight_decay == 0.0 and isinstance(train.weight_decay, float)  # int fills float
    search, problems = schema.read(SECTIONS["search"], {"objectives": ["val_accuracy", "latency_ms"]}, "search")
    assert problems == [] and search.objectives == ("val_accuracy", "latency_ms")  # a list fills a tuple
    _, problems = schema.read(Train, {"epochs": "5", "freeze_backbone": 1, "optimizer": "Adam"}, "train")
    assert problems == [  # a text never passes for a number, nor a number for true; choices are exact
        "train.epochs: '5' must be an integer >= 1",
        "train.freeze_backbone: 1 must be true or false",
        "train.optimizer: 'Adam' must be one of adam, rmsprop, sgd, adamw",
    ]
    assert schema.read(Resources, {"gpus_per_trial": "all"}, "resources")[1] == [
        "resources.gpus_per_trial: 'all' must be a number >= 0 or auto"
    ]
    assert schema.read(Train, "fast", "train")[1] == ["train: must be a mapping, got str"]


def test_a_searched_value_is_checked_by_the_declaration_of_what_it_sets():
    assert axis_value_problem("lr", 0.5) is None and axis_value_problem("lr", 0) == "0 must be a number in (0, 10]"
    assert axis_value_problem("option", 3) == "3 must be one of 1, 2"
    assert axis_value_problem("blocks", 7) == "7 must be an integer in [1, 6]"
    assert axis_value_problem("base_filters", None) == "None must be an integer >= 1"  # a searched value is a value
    assert schema.rule(schema.hints(TrialConfig)["dropout"]) == "a number in [0, 1)"
    with pytest.raises(SpecError, match=r"space\.dropout: 1 must be a number in \[0, 1\)"):
        load_study("segmentation", "smoke", {"space": {"model": ["unet"], "lr": [0.01], "dropout": [1]}})


def test_a_recorded_study_of_a_users_two_class_folder_reads_where_the_folder_is_not():
    """Reading a finished sweep (report, export, serve) needs neither its data folder nor its classes: a positive
    class of the user's two classes is not checked against the built-in set's four (it was, and was refused)."""
    from search.study.spec import study_from_record

    record = load_study("classification", "smoke").to_dict()
    record["data"] |= {"data_dir": "/gone/smears", "positive_class": "yes"}
    assert study_from_record(record).data.positive_class == "yes"
    with pytest.raises(SpecError, match=r"data\.data_dir: /gone/smears does not exist"):
        study_from_record(record, here=True)  # resuming it trains here: then the folder must be
