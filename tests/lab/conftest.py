from tests.lab.fixtures import lab_factory, require_lab  # noqa: F401
