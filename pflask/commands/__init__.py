"""What the subcommands do besides `run`: validate, plan, convert, ps, stop,
exec (nsenter), attach; and the original flags.
"""
