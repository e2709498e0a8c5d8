"""SMS consent gateway. Importing the package loads nothing: see gateway/bootstrap.py for the wiring."""
