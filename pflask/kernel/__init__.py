"""The kernel's interfaces and names: ctypes wrappers raising SyscallError,
signals, capabilities, cgroup controllers.  No policy; every stage uses them.
"""
