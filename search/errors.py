"""The sweep's own error, kept import-light: the command line builds its parser without loading pandas or Ray."""


class SweepError(RuntimeError):
    """An experiment that cannot be run, resumed or read; the message says what to do."""

    exit_code = 2


class SweepInterrupted(SweepError):
    """The sweep was stopped (Ctrl-C, SIGINT) before every trial ended; Ray Tune kept its state to resume from."""

    exit_code = 130
