"""The command line of the pipeline: the invoke tasks that ``tasks.py`` gathers into its namespace.

- :mod:`common` turns pipeline errors into one-line messages and loads settings and AWS clients;
- :mod:`stages` holds build, ami, gc, settings and test;
- :mod:`release` holds deploy and its companions (plan, status, logs, rollback, history, destroy,
  synth, iam-policy);
- :mod:`local` holds what runs on this machine: run, the ``local.*`` and the ``xen.*`` collections.

Each task parses its flags, loads the settings, calls one function of the pipeline and prints.
"""
