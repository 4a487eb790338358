"""Can ASHA trust the quickstart's validation curves? Its decisions and the curves' smoothness over several seeds.

Usage: python benchmarks/bench_curves.py [--study classification] [--seeds 0 1 2 3 4] [--concurrent 2]

For each seed (``search.seed``: the data's split and the models' initialisation) it drives the quickstart's trials
in this process, epoch by epoch through the trial's own loop (``search.sweep.trial``), ``--concurrent`` at a time in
lockstep as the sweep runs them on 2 cores, and feeds their validation metric to Ray's own ASHA scheduler, as
``sweep run`` does. Each epoch is scored twice from one training run: with the BatchNorm moving averages as the
last fit left them ("moving", the trial loop before precise BN) and with the statistics recomputed over the epoch's
training images ("precise", what the trial reports now; models.batchnorm). A trial trains until both ASHAs stopped
it. Printed per seed and scoring: which trials ASHA kept to the last epoch, and the largest epoch-to-epoch drop of
the validation metric of any trial (the curves' smoothness), then how many seeds kept the most common set.
"""

import argparse
import itertools
import os
import time
from collections import Counter

SCORINGS = ("moving", "precise")


def _asha(study):
    from ray.tune.schedulers import ASHAScheduler

    return ASHAScheduler(
        max_t=study.train.epochs,
        grace_period=study.scheduler.grace_period,
        reduction_factor=study.scheduler.reduction_factor,
        metric=study.metric,
        mode=study.mode,
    )


def run_seed(study, concurrent: int) -> dict:
    """{scoring: ({kept trial labels}, {label: [validation metric per epoch run]})} for one seed."""
    from ray.tune.experiment import Trial
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.search.variant_generator import generate_variants

    import models.batchnorm as bn
    from search.study.results import trial_name
    from search.study.spec import param_space
    from search.sweep.runner import prepare_all

    data = prepare_all(study)
    configs = [config for _, config in generate_variants(param_space(study))]  # in Ray's order
    moving = {}  # the validation metric before the recomputation, read inside the loop (the trial's own data)
    recompute = bn.recompute_batchnorm_statistics

    def scored_twice(net, images, batch_size):
        label = current[0]
        moving.setdefault(label, []).append(_evaluate(net, val[config_of[label]], study.metric, batch_size))
        return recompute(net, images, batch_size)

    bn.recompute_batchnorm_statistics = scored_twice  # wraps the loop's step, the loop itself is unchanged
    schedulers = {s: _asha(study) for s in SCORINGS}
    curves = {s: {} for s in SCORINGS}
    running = {s: {} for s in SCORINGS}
    config_of, val, current = {}, {}, [None]
    try:
        for start in range(0, len(configs), concurrent):
            learners = {}
            for config in configs[start : start + concurrent]:
                label = trial_name(config)
                option = config.get("option", study.data.option)
                config_of[label] = option
                s = data[option].split("val")
                val[option] = (s.images, s.labels)
                learners[label] = _epochs(study, config, data[option])
                next(learners[label])  # the model
                for scoring in SCORINGS:
                    running[scoring][label] = Trial("__bench", config=config, stub=True)
                    schedulers[scoring].on_trial_add(None, running[scoring][label])
            for epoch in range(1, study.train.epochs + 1):
                for label in list(learners):
                    current[0] = label
                    metrics = next(learners[label])
                    values = {"moving": moving[label][-1], "precise": metrics[study.metric]}
                    for scoring in SCORINGS:
                        if label not in running[scoring]:
                            continue
                        curves[scoring].setdefault(label, []).append(values[scoring])
                        result = {"training_iteration": epoch, study.metric: values[scoring]}
                        action = schedulers[scoring].on_trial_result(None, running[scoring][label], result)
                        if action == TrialScheduler.STOP and epoch < study.train.epochs:
                            del running[scoring][label]
                    if all(label not in running[s] for s in SCORINGS):
                        del learners[label]
    finally:
        bn.recompute_batchnorm_statistics = recompute
    epochs = study.train.epochs
    return {s: ({k for k, c in curves[s].items() if len(c) == epochs}, curves[s]) for s in SCORINGS}


def _epochs(study, config, data):
    """One trial as the trial loop trains it on one split (``search.sweep.trial.Fold``, the whole model): its model,
    then its metrics after each epoch."""
    import keras

    import models
    from search.sweep.trial import Fold

    trial = study.trial(config)
    info = models.get(trial.model)
    build = {"num_classes": study.facts.num_outputs(len(data.classes)), **trial.hyperparameters(info)}
    fit = Fold.of(data, study, None, 0)
    keras.utils.set_random_seed(trial.seed)
    shape = (data.config.image_size,) * 2 + (3,)
    fit.model = models.build(info.name, input_shape=shape, weights=trial.train.weights, seed=trial.seed, **build)
    if build.get("standardize_features"):  # on the training split's features, as the trial does
        info.backbone.standardize(fit.model, info.backbone.extractor(fit.model).predict(fit.x_train, verbose=0))
    fit.compile(trial.train, study, trial.lr)
    yield fit.model
    for epoch in range(trial.train.epochs):
        yield fit.epoch(epoch, trial.train, trial.seed)


def _evaluate(net, xy, metric: str, batch_size: int) -> float:
    x, y = xy
    return float(net.evaluate(x, y, batch_size=batch_size, verbose=0, return_dict=True)[metric.removeprefix("val_")])


def largest_drop(curve: list[float]) -> float:
    """The largest fall of a curve from one epoch to the next (0 for a curve that never falls)."""
    return max([0.0] + [a - b for a, b in itertools.pairwise(curve)])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--study", default="classification")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--concurrent", type=int, default=2, help="trials in lockstep, as the sweep runs them")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from search.study.spec import load_study

    kept = {s: [] for s in SCORINGS}
    for seed in args.seeds:
        study = load_study(args.study, "quickstart", {"search": {"seed": seed}})
        started = time.perf_counter()
        outcome = run_seed(study, args.concurrent)
        wall, load = time.perf_counter() - started, os.getloadavg()[0]
        print(f"\nseed {seed}: {wall:.0f} s, load average {load:.1f} ({os.cpu_count()} cores, shared)", flush=True)
        for scoring in SCORINGS:
            survivors, curves = outcome[scoring]
            kept[scoring].append(frozenset(survivors))
            drops = {label: largest_drop(c) for label, c in curves.items()}
            worst = max(drops, key=drops.get)
            print(f"  {scoring:8} kept {sorted(survivors)}; largest drop {drops[worst]:.3f} ({worst})")
            for label, c in curves.items():
                print(f"    {label:40} " + " ".join(f"{v:.2f}" for v in c))
    print(f"\n{args.study} quickstart, {len(args.seeds)} seeds:")
    for scoring in SCORINGS:
        common, count = Counter(kept[scoring]).most_common(1)[0]
        print(f"  {scoring:8} the most common kept set {sorted(common)} in {count} of {len(args.seeds)} seeds")


if __name__ == "__main__":
    main()
