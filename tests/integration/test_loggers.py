"""The spectrum reaches the trainer's loggers, as NequIP's own metrics do."""

import csv
import math

from helpers import nequip_train

L_VALUES = [0, 3, 4, 5]


def test_a_csv_logger_gets_every_reading_of_the_spectrum(tiny_backbone, tiny_aspirin, tmp_path):
    """(Fails when the callback writes the report without ``log_report``.)"""
    run_dir = tmp_path / "run"
    nequip_train(
        "aspirin_probe.yaml", run_dir, f"dataset_file={tiny_aspirin}",
        f"spectral_probe.backbones=[{tiny_backbone['ckpt']}]",
        f"spectral_probe.l_values=[{','.join(map(str, L_VALUES))}]", "spectral_probe.channels=2",
        "++trainer.logger._target_=lightning.pytorch.loggers.CSVLogger",
        f"++trainer.logger.save_dir={tmp_path / 'logs'}",
    )  # fmt: skip
    (metrics,) = (tmp_path / "logs").rglob("metrics.csv")
    rows = list(csv.DictReader(metrics.open()))
    logged = {key: float(value) for row in rows for key, value in row.items() if value}
    for l in L_VALUES:
        for name in ("rho_forces", "rho_energy", "R2_inj_forces", "rho_recovered_energy"):
            assert math.isfinite(logged[f"spectral/{name}/l{l}"]), (name, l)
        assert f"spectral/alpha/b0/e_l{l}" in logged
        assert (f"spectral/alpha/b0/e_null{l}" in logged) == (l > 0)  # s_0 has no direction
    assert logged["spectral/delta_low"] <= logged["spectral/delta"] <= logged["spectral/delta_high"]
