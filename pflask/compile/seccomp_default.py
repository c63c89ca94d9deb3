"""pflask's default seccomp profile, as data.

It has the semantics of the default profile of Docker and podman (an allow
list: what an ordinary program needs, plus what a capability the container
keeps makes meaningful), written here as pflask's own lists, grouped by what
the calls are for, and read by `pflask.compile.seccomp`, which builds it with
libseccomp.  How a call fares:

- in `ALLOWED` (or `ALLOWED_ON` for the native architecture): allowed;
- in `WITH_CAPABILITY[cap]`: allowed when the container keeps `cap`, else it
  fails with EPERM, as the kernel itself would say without the capability;
- in `REFUSED`: always EPERM (kernel interfaces that are not namespaced:
  keyrings, kexec, swap, ...);
- anything else, including calls newer than these lists: ENOSYS, so C
  libraries fall back to an older call as on an older kernel (glibc's
  clone3 -> clone, for instance), where EPERM would be taken as a refusal.

Argument rules: personality(2) only with the personas programs ask for
(`PERSONALITIES`); without CAP_SYS_ADMIN, clone(2) without namespace flags and
clone3(2) ENOSYS (its flags are behind a pointer seccomp cannot read, so it
must fall back to clone).  The second program (`pflask.compile.seccomp` loads it on
top of the first; the kernel takes the strictest answer of both) refuses
with EPERM, whatever the capabilities: the TIOCSTI and TIOCLINUX ioctls
(typing into, or selecting on, a terminal the container inherited, as
bubblewrap and systemd-nspawn refuse them), AF_VSOCK sockets (not
namespaced), and without CAP_SYS_ADMIN clone(2) with any namespace flag.
Those compare only the low 32 bits of the argument, which is all the kernel
reads of an `int` or `unsigned int`: setting high bits does not get past them.
"""

from __future__ import annotations

ALLOWED: tuple[str, ...] = (
    # files and directories
    "access", "faccessat", "faccessat2", "chdir", "fchdir", "getcwd",
    "chmod", "fchmod", "fchmodat", "fchmodat2",
    "chown", "chown32", "fchown", "fchown32", "fchownat", "lchown", "lchown32",
    "open", "openat", "openat2", "creat", "close", "close_range",
    "link", "linkat", "unlink", "unlinkat", "symlink", "symlinkat",
    "readlink", "readlinkat", "rename", "renameat", "renameat2",
    "mkdir", "mkdirat", "rmdir", "mknod", "mknodat",
    "truncate", "truncate64", "ftruncate", "ftruncate64", "fallocate",
    "stat", "stat64", "lstat", "lstat64", "fstat", "fstat64", "fstatat64", "newfstatat",
    "statx", "statfs", "statfs64", "fstatfs", "fstatfs64", "getdents", "getdents64",
    "umask", "utime", "utimes", "utimensat", "utimensat_time64", "futimesat",
    "name_to_handle_at", "copy_file_range", "flock", "fcntl", "fcntl64",
    "sync", "syncfs", "fsync", "fdatasync", "sync_file_range", "readahead",
    "fadvise64", "fadvise64_64", "cachestat",
    # extended attributes
    "getxattr", "lgetxattr", "fgetxattr", "setxattr", "lsetxattr", "fsetxattr",
    "listxattr", "llistxattr", "flistxattr", "removexattr", "lremovexattr", "fremovexattr",
    # reading and writing
    "read", "readv", "pread64", "preadv", "preadv2",
    "write", "writev", "pwrite64", "pwritev", "pwritev2",
    "lseek", "_llseek", "sendfile", "sendfile64", "splice", "tee", "vmsplice",
    "dup", "dup2", "dup3", "pipe", "pipe2", "ioctl",
    # waiting for events
    "select", "_newselect", "pselect6", "pselect6_time64", "poll", "ppoll", "ppoll_time64",
    "epoll_create", "epoll_create1", "epoll_ctl", "epoll_ctl_old", "epoll_wait",
    "epoll_wait_old", "epoll_pwait", "epoll_pwait2",
    "eventfd", "eventfd2", "signalfd", "signalfd4",
    "timerfd_create", "timerfd_settime", "timerfd_settime64", "timerfd_gettime",
    "timerfd_gettime64",
    "inotify_init", "inotify_init1", "inotify_add_watch", "inotify_rm_watch", "fanotify_mark",
    # asynchronous I/O
    "io_setup", "io_destroy", "io_submit", "io_cancel", "io_getevents",
    "io_pgetevents", "io_pgetevents_time64",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    # memory
    "brk", "mmap", "mmap2", "munmap", "mremap", "mprotect", "madvise", "mincore", "msync",
    "mlock", "mlock2", "mlockall", "munlock", "munlockall", "remap_file_pages",
    "membarrier", "memfd_create", "memfd_secret", "map_shadow_stack",
    "pkey_alloc", "pkey_free", "pkey_mprotect",
    # processes and threads
    "execve", "execveat", "exit", "exit_group", "fork", "vfork", "clone",
    "wait4", "waitid", "waitpid", "kill", "tkill", "tgkill",
    "pidfd_open", "pidfd_send_signal", "process_mrelease",
    "getpid", "getppid", "gettid", "getpgid", "setpgid", "getpgrp", "getsid", "setsid",
    "set_tid_address", "set_robust_list", "get_robust_list", "rseq", "restart_syscall",
    "get_thread_area", "set_thread_area", "prctl", "seccomp", "capget", "capset",
    "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self",
    "uname", "sysinfo", "getrandom",
    # debugging one's own processes (a PID namespace keeps others out of
    # reach; Linux 4.8 closed the seccomp bypass through ptrace)
    "ptrace", "process_vm_readv", "process_vm_writev",
    # scheduling and limits
    "getpriority", "setpriority", "ioprio_get", "ioprio_set",
    "getrlimit", "setrlimit", "ugetrlimit", "prlimit64", "getrusage", "times", "getcpu",
    "sched_yield", "sched_getaffinity", "sched_setaffinity", "sched_getattr", "sched_setattr",
    "sched_getparam", "sched_setparam", "sched_getscheduler", "sched_setscheduler",
    "sched_get_priority_max", "sched_get_priority_min",
    "sched_rr_get_interval", "sched_rr_get_interval_time64",
    # user and group ids
    "getuid", "getuid32", "geteuid", "geteuid32", "getgid", "getgid32", "getegid", "getegid32",
    "getresuid", "getresuid32", "getresgid", "getresgid32", "getgroups", "getgroups32",
    "setuid", "setuid32", "setgid", "setgid32", "setreuid", "setreuid32",
    "setregid", "setregid32", "setresuid", "setresuid32", "setresgid", "setresgid32",
    "setgroups", "setgroups32", "setfsuid", "setfsuid32", "setfsgid", "setfsgid32",
    # signals and timers
    "rt_sigaction", "rt_sigprocmask", "rt_sigpending", "rt_sigqueueinfo", "rt_tgsigqueueinfo",
    "rt_sigreturn", "rt_sigsuspend", "rt_sigtimedwait", "rt_sigtimedwait_time64",
    "sigaltstack", "sigprocmask", "sigreturn", "pause", "alarm",
    "getitimer", "setitimer", "timer_create", "timer_delete", "timer_getoverrun",
    "timer_gettime", "timer_gettime64", "timer_settime", "timer_settime64",
    # clocks (setting them is CAP_SYS_TIME's, below; adjtimex only reads without it)
    "clock_gettime", "clock_gettime64", "clock_getres", "clock_getres_time64",
    "clock_nanosleep", "clock_nanosleep_time64", "nanosleep", "gettimeofday", "time",
    "adjtimex", "clock_adjtime", "clock_adjtime64",
    # futexes
    "futex", "futex_time64", "futex_waitv", "futex_wait", "futex_wake", "futex_requeue",
    # System V and POSIX IPC (the IPC namespace's own)
    "ipc", "msgget", "msgctl", "msgsnd", "msgrcv", "semget", "semctl", "semop", "semtimedop",
    "semtimedop_time64", "shmget", "shmctl", "shmat", "shmdt",
    "mq_open", "mq_unlink", "mq_getsetattr", "mq_notify", "mq_timedsend",
    "mq_timedsend_time64", "mq_timedreceive", "mq_timedreceive_time64",
    # sockets (AF_VSOCK is refused by the second program)
    "socket", "socketpair", "socketcall", "bind", "connect", "listen", "accept", "accept4",
    "getsockname", "getpeername", "getsockopt", "setsockopt", "shutdown",
    "send", "sendto", "sendmsg", "sendmmsg", "recv", "recvfrom", "recvmsg", "recvmmsg",
    "recvmmsg_time64",
)  # fmt: skip

# Calls that exist on some architectures only, allowed where the native one is listed.
ALLOWED_ON: dict[str, tuple[str, ...]] = {
    "arch_prctl": ("x86_64",),
    "modify_ldt": ("x86_64", "i386", "i686"),
    "sync_file_range2": ("aarch64", "ppc64le"),
    "swapcontext": ("ppc64le",),
    "arm_fadvise64_64": ("aarch64",),
    "arm_sync_file_range": ("aarch64",),
    "breakpoint": ("aarch64",),
    "cacheflush": ("aarch64",),
    "set_tls": ("aarch64",),
    "s390_pci_mmio_read": ("s390x",),
    "s390_pci_mmio_write": ("s390x",),
    "s390_runtime_instr": ("s390x",),
    "riscv_flush_icache": ("riscv64",),
}

# What a capability makes meaningful; without it these fail with EPERM.
WITH_CAPABILITY: dict[str, tuple[str, ...]] = {
    "sys_admin": (
        "mount", "umount", "umount2", "pivot_root", "mount_setattr", "move_mount",
        "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
        "unshare", "setns", "clone3", "sethostname", "setdomainname",
        "quotactl", "quotactl_fd", "lookup_dcookie", "fanotify_init",
        "bpf", "perf_event_open", "syslog",
    ),
    "bpf": ("bpf",),
    "perfmon": ("perf_event_open",),
    "syslog": ("syslog",),
    "dac_read_search": ("open_by_handle_at",),
    "sys_boot": ("reboot",),
    "sys_chroot": ("chroot",),
    "sys_module": ("init_module", "finit_module", "delete_module"),
    "sys_pacct": ("acct",),
    "sys_ptrace": ("kcmp", "pidfd_getfd", "process_madvise"),
    "sys_rawio": ("iopl", "ioperm"),
    "sys_time": ("settimeofday", "stime", "clock_settime", "clock_settime64"),
    "sys_tty_config": ("vhangup",),
    "sys_nice": ("get_mempolicy", "set_mempolicy", "set_mempolicy_home_node", "mbind"),
}  # fmt: skip

# Known and always refused: interfaces the kernel does not confine to a container.
REFUSED: tuple[str, ...] = (
    "add_key", "keyctl", "request_key",  # the kernel keyrings
    "kexec_load", "kexec_file_load",  # replacing the running kernel
    "swapon", "swapoff",
    "userfaultfd",  # a tool of kernel exploits; unprivileged use is off by default
    "uselib", "ustat", "sysfs", "_sysctl", "nfsservctl", "vm86", "vm86old",
    "create_module", "get_kernel_syms", "query_module",
    "move_pages", "migrate_pages",  # other processes' NUMA placement
)  # fmt: skip

# personality(2) values: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32,
# and 0xffffffff (a query that changes nothing).
PERSONALITIES: tuple[int, ...] = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# <linux/sched.h>: every CLONE_NEW* flag (and CLONE_NEWTIME), refused to
# clone(2) without CAP_SYS_ADMIN.
CLONE_NAMESPACE_FLAGS: tuple[int, ...] = (
    0x00000080,  # CLONE_NEWTIME
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)

# <asm-generic/ioctls.h>: ioctls refused on any file (a terminal the
# container inherited from the host, above all).
TIOCSTI = 0x5412  # push a byte into the terminal's input queue
TIOCLINUX = 0x541C  # the Linux console's selection (copy and paste) and more
REFUSED_IOCTLS: tuple[int, ...] = (TIOCSTI, TIOCLINUX)

# Refused with ENOSYS rather than EPERM when their capability is missing:
# clone3's flags are out of seccomp's sight, and C libraries fall back to
# clone(2) only on ENOSYS.
ENOSYS_WITHOUT_CAPABILITY: tuple[str, ...] = ("clone3",)

AF_VSOCK = 40  # the host's virtio sockets: not namespaced
