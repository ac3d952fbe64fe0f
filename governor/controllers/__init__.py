"""One module per cgroup v2 controller (issue #17): see :mod:`governor.controllers.base` for
what a module declares and :mod:`governor.controllers.registry` for the list."""
