"""The continuous-learning loop: experiences are judged, the weak ones corrected by a
teacher, and, when a track's trigger fires, assembled with replay into a dataset and a
training job (see DESIGN.md, "The continuous-learning loop").

- :mod:`honed.learning.judge`: which experiences are good, which need improvement, and
  what each one would teach (a person's correction, the teacher's, or its own output);
- :mod:`honed.learning.teacher`: asking an OpenAI-compatible teacher and validating what
  it answers;
- :mod:`honed.learning.curriculum`: a teacher pass over the worst experiences, within
  cooldown, batch and daily limits;
- :mod:`honed.learning.trigger`: the per-track state of the loop, the trigger policy,
  and assembling a batch into a dataset and a job;
- :mod:`honed.learning.loop`: the daemon's thread that runs all of it.
"""
