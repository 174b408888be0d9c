"""Registers the `notebooks` marker (the notebook tier: `pytest -m notebooks`) for --strict-markers."""


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "notebooks: executes notebooks/*.ipynb with nbclient on results/ (needs nbclient + ipykernel)",
    )
