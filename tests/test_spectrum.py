"""Spectrum diagnostics on spectra with known answers, and DiSF against random."""
import numpy as np
import pytest

from data_select import disf, spectrum


def test_effective_rank_and_dominance_known_spectra():
    assert spectrum.effective_rank(np.ones(50)) == pytest.approx(50)
    assert spectrum.effective_rank(np.r_[3.0, np.zeros(9)]) == pytest.approx(1.0)
    assert spectrum.dominance_score(np.ones(50), top_k=10) == pytest.approx(0.2)
    assert spectrum.dominance_score(np.r_[7.0, np.zeros(9)], top_k=1) == pytest.approx(1.0)
    assert spectrum.dominance_score([1.0, 3.0, 2.0, 4.0], top_k=2) == pytest.approx(0.7)
    with pytest.raises(spectrum.SpectrumError):
        spectrum.effective_rank(np.zeros(3))


def test_correlation_eigenvalues_isotropic_and_rank_one():
    rng = np.random.default_rng(0)
    iso = spectrum.correlation_eigenvalues(rng.normal(size=(20_000, 8)), sample=20_000)
    assert iso.sum() == pytest.approx(8)
    assert np.all(np.diff(iso) <= 0)
    assert spectrum.effective_rank(iso) == pytest.approx(8, rel=0.01)
    t = rng.normal(size=(500, 1))
    rank1 = spectrum.correlation_eigenvalues(t @ rng.normal(size=(1, 6)))
    assert spectrum.effective_rank(rank1) == pytest.approx(1.0, abs=1e-6)
    with_const = np.column_stack([rng.normal(size=(100, 3)), np.ones(100)])
    e = spectrum.correlation_eigenvalues(with_const)
    assert e.sum() == pytest.approx(3) and e[-1] == pytest.approx(0, abs=1e-12)


def _low_rank_pool(n=2048, d=32, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 3)) * [6, 4, 3]) @ rng.normal(size=(3, d)) + rng.normal(size=(n, d))


def test_disf_selection_less_dominated_than_random():
    x = _low_rank_pool().astype(np.float32)
    sel = disf.select(x, ratio=1 / 16, batch_size=512, seed=0)
    report = spectrum.compare(x, sel, seed=0, top_k=3)
    assert report["selected"]["files"] == len(sel) == report["random"]["files"]
    assert report["pool"]["files"] == len(x)
    assert report["selected"]["dominance"] < report["random"]["dominance"]
    assert report["selected"]["effective_rank"] > report["random"]["effective_rank"]


def test_plot_spectra_writes_png(tmp_path):
    out = tmp_path / "sub" / "spectra.png"
    spectrum.plot_spectra({"a": np.linspace(5, 0.1, 20), "b": np.ones(20)}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["spectra.png"]


def test_plot_domains_writes_a_png_and_refuses_an_empty_selection(tmp_path):
    domains = {"code": {"pool": 60, "selected": 2}, "books": {"pool": 5, "selected": 3}}
    spectrum.plot_domains(domains, tmp_path / "d.png")
    assert (tmp_path / "d.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(spectrum.SpectrumError, match="at least one domain"):
        spectrum.plot_domains({"code": {"pool": 60, "selected": 0}}, tmp_path / "e.png")
