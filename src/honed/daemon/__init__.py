"""The daemon: supervisor loop, inbox watcher, trainer processes, control, schedule.

Read ``supervisor.py`` top to bottom for the whole path of a job."""
