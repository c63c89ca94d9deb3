"""Plan -> a supervised container: the supervisor on the host, the container's
processes, and the modules that carry out each kind of step.
"""
