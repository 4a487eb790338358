"""Ray itself: starting or joining a cluster, and a study as a job on one."""
