"""`python -m reportgen`."""

from reportgen.cli import run

if __name__ == "__main__":
    run()
