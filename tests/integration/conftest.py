"""Fixtures shared by integration test modules: the ML service (see ml_harness.py).

The harness is imported inside the fixtures, so collecting the other modules here loads neither
onnxruntime nor scikit-learn.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.ml_harness import Models, ServiceThread


@pytest.fixture(scope="module")
def ml_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA and the leaves of ml_harness.LEAVES (ml, cortex, soar, operator)."""
    from tests.integration.ml_harness import issue_pki

    return issue_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def ml_models(tmp_path: Path) -> Models:
    """A keyring and a model directory holding one trained model."""
    from tests.integration.ml_harness import train_models

    return train_models(tmp_path)


@pytest.fixture
def ml_service(ml_pki: Path, ml_models: Models) -> Iterator[ServiceThread]:
    """The ML service serving `ml_models` on 127.0.0.1:0, started; stopped after the test."""
    from mesh.config import config_from_dict
    from ml.config import MlConfig
    from tests.integration.ml_harness import ServiceThread, service_config

    svc = ServiceThread(config_from_dict(MlConfig, service_config(ml_pki, ml_models)))
    try:
        yield svc
    finally:
        svc.close()
