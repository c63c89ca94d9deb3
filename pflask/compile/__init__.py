"""Manifest -> Plan: the pure compiler (no syscalls, no writes), the plan's
records, the seccomp filters it builds, and the cache of compiled plans.
"""
