"""popwatch's lab: a small anycast internet on one machine, built with network
namespaces, where popwatch runs and every claim it makes can be watched end to end.

``popwatch-lab`` (:mod:`popwatch_lab.cli`) is its command; :mod:`popwatch_lab.world`
says what the world is.
"""
