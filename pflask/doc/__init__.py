"""The command line and the manifest, described: the argparse parsers, the
schema's reference, the man pages and the shells' completion scripts.
"""
