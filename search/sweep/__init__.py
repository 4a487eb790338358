"""Running a sweep: the Ray Tune driver, the trial, the feature and compile caches, test scoring, trackers
and the bench."""
