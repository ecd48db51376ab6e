"""Real servers the tests talk to, started and stopped by the tests themselves.

Written for this project and kept with it, so that a bare clone can run the
whole suite: each helper writes its own configuration into a throwaway folder
and runs the distribution's binary (installed by ``scripts/test-deps.sh``)
against it, never touching the machine's own instance.
"""
