"""The benchmark scripts' own logic, on the CPU (their timings are not asserted)."""
import importlib.util
import os
import statistics
from pathlib import Path

import pytest
import torch

import equifast as ef
from equifast.models import load_model

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _script(name):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_end_to_end_profile_names_the_operator_and_counts_its_calls(capsys):
    e2e = _script("run_end_to_end")
    e2e.main(["--model", "resnet18", "--size", "32", "--images", "4", "--batch", "4",
              "--shifts", "2", "--rounds", "1", "--device", "cpu", "--no-write", "--profile"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| resnet18"))
    assert "| 1..2 |" in row
    # One operator call per (point with a spatial map, transform): the profile's call count
    # is what the model's points say it must be.
    model, _ = load_model("resnet18", weights=None)
    points = ef.split(model, torch.zeros(1, 3, 32, 32))
    maps = sum(1 for p in points if len(p.shape) == 3 and p.shape[-1] > 1)  # 1x1: vectors
    assert maps == 7
    line = next(l for l in out.splitlines() if l.strip().startswith("equifast::equivariance_scores"))
    assert int(line.split()[-1]) == 2 * maps


def test_end_to_end_reports_the_median_of_alternated_rounds(tmp_path, monkeypatch, capsys):
    # one overhead per round, on a shared machine single rounds move by tens of per cent
    e2e = _script("run_end_to_end")
    calls = []
    measure = ef.measure
    monkeypatch.setattr(e2e.ef, "measure", lambda *a, **k: calls.append("measure") or measure(*a, **k))
    forward_only = e2e.forward_only
    monkeypatch.setattr(e2e, "forward_only", lambda *a, **k: calls.append("forward") or forward_only(*a, **k))
    path = tmp_path / "RESULTS.md"
    e2e.main(["--model", "resnet18", "--size", "32", "--images", "4", "--batch", "4",
              "--shifts", "2", "--rounds", "3", "--device", "cpu", "--output", str(path)])
    assert calls == ["forward", "measure"] * 4  # a warm-up, then 3 rounds, alternated
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| model"))
    row = next(line for line in out.splitlines() if line.startswith("| resnet18"))
    cells = dict(zip([c.strip() for c in header.strip("|").split("|")],
                     [c.strip() for c in row.strip("|").split("|")]))
    assert cells["rounds"] == "3"
    per_round = [float(v.rstrip("%")) for v in cells["overhead per round"].split(", ")]
    assert len(per_round) == 3
    assert float(cells["overhead"].rstrip("%")) == statistics.median(per_round)
    # each round's line: "round i: forward F s, measure M s, overhead R%"
    rounds = [line.replace(",", "").split() for line in out.splitlines() if line.startswith("round ")]
    assert [float(r[-1].rstrip("%")) for r in rounds] == per_round
    # images/s from the median measure time (4 images; the rounds' times printed to 1 ms)
    median_measure = statistics.median(float(r[6]) for r in rounds)
    assert float(cells["measure s"]) == pytest.approx(median_measure, abs=0.006)
    assert float(cells["images/s"]) == pytest.approx(4 / median_measure, rel=0.02, abs=0.06)
    text = path.read_text()  # its own section: per machine kind and configuration, the row as printed
    name = f"end-to-end-{_script('results').machine_kind('cpu')}-resnet18-32px-4img-b4-s2"
    section = text[text.index(f"<!-- {name}:begin -->"):text.index(f"<!-- {name}:end -->")]
    assert header in section and row in section


def test_end_to_end_writes_the_issues_rows_alone_into_the_machines_section():
    # a smoke run (2 images at 32 pixels) replaced the recorded ResNet-18 row
    e2e = _script("run_end_to_end")
    kind = _script("results").machine_kind("cpu")
    args = e2e.argparse.Namespace(model="resnet18", size=112, images=32, batch=32, shifts=32)
    assert e2e.section_name(args, torch.device("cpu")) == f"end-to-end-{kind}"
    args.images = 2
    assert e2e.section_name(args, torch.device("cpu")) == f"end-to-end-{kind}-resnet18-112px-2img-b32-s32"


def test_results_sections_are_replaced_alone(tmp_path):
    results = _script("results")
    path = tmp_path / "RESULTS.md"
    results.write_section("a", "first", path)
    results.write_section("b", "second", path)
    results.write_section("a", "again", path)
    text = path.read_text()
    assert "again" in text and "second" in text and "first" not in text
    assert text.index("<!-- a:begin -->") < text.index("<!-- b:begin -->")
    assert not list(tmp_path.glob("*.tmp*"))  # written through a temporary file, then moved
    # a marker lost by hand: the next write but one replaced all from a's begin to the new end,
    # the notes and section b between them too
    path.write_text(text.replace("<!-- a:end -->", "") + "\nmy notes\n")
    before = path.read_text()
    with pytest.raises(ValueError, match=r"hold section 'a' between one <!-- a:begin --> and one "
                                         r"<!-- a:end --> after it, but it has 1 and 0"):
        results.write_section("a", "new", path)
    assert path.read_text() == before
    results.write_section("b", "b again", path)  # a whole section is still replaced
    assert "b again" in path.read_text() and "my notes" in path.read_text()


def test_gpu_peaks_match_the_most_specific_name():
    ratios = _script("run_ratios")
    assert ratios.gpu_peaks("NVIDIA GH200 480GB")[1] != ratios.gpu_peaks("NVIDIA H200")[1]
    assert ratios.gpu_peaks("NVIDIA A100 80GB PCIe") != ratios.gpu_peaks("NVIDIA A100-SXM4-40GB")
    assert ratios.gpu_peaks("NVIDIA H100 NVL") == (417.5, 3900.0)  # not the H100 SXM's
    assert ratios.gpu_peaks("NVIDIA RTX 4090") is None


def test_roofline_is_the_slower_of_products_and_reading():
    roofline = _script("run_ratios").roofline
    fx = torch.zeros(2, 4, 3, 3)  # 2 N K^2 P = 576 FLOP over P = 9; both inputs: 576 bytes
    assert roofline(fx, 9, (1e-9, 1e-7)) == pytest.approx(5.76)   # 1000 FLOP/s, 100 B/s
    assert roofline(fx, 9, (1e-10, 1e-6)) == pytest.approx(5.76)  # 100 FLOP/s, 1000 B/s


@pytest.mark.parametrize("name", ["run_ratios", "run_end_to_end"])
def test_cuda_without_a_gpu_is_a_usage_error(name, capsys):
    with pytest.raises(SystemExit) as exit_:
        _script(name).main(["--device", "cuda"])
    assert exit_.value.code == 2
    assert "Expected a CUDA device for 'cuda', but torch sees none" in capsys.readouterr().err


@pytest.mark.parametrize("name, argv, said", [
    ("run_end_to_end", ["--batch", "0"], "argument --batch: invalid positive int value: '0'"),
    ("run_end_to_end", ["--model", "nope"], "Expected a torchvision or timm model name"),
    ("run_end_to_end", ["--size", "16", "--shifts", "16"], "--shifts 16 must be below --size 16"),
    ("run_end_to_end", ["--model", "vit_b_16", "--size", "32", "--shifts", "4"],
     "--model vit_b_16 does not take 32x32 images"),
    ("run_end_to_end", ["--output", "."], "is a folder; name the markdown file"),
    ("run_ratios", ["--output", "."], "is a folder; name the markdown file"),
    ("run_ratios", ["--peak-tflops", "-1"], "invalid positive float value: '-1'"),
    ("bench_fingerprint", ["--repeat", "0"], "argument --repeat: invalid positive int value: '0'"),
    ("bench_fingerprint", ["--shards", "0"], "argument --shards: invalid positive int value: '0'"),
    ("bench_fingerprint", ["--classes", "0"], "argument --classes: invalid positive int value: '0'"),
    ("bench_fingerprint", ["--per-class", "-1"], "invalid positive int value: '-1'"),
])
def test_bad_arguments_are_usage_errors_before_anything_runs(name, argv, said, capsys, tmp_path,
                                                            monkeypatch):
    # raw tracebacks from range(), torch or the model; a folder as --output failed at the end
    monkeypatch.chdir(tmp_path)
    script = _script(name)
    for work in ("alternating_medians", "make_folder"):  # what each script runs first
        if hasattr(script, work):
            monkeypatch.setattr(script, work, lambda *a, **k: pytest.fail("it ran"))
    with pytest.raises(SystemExit) as exit_:
        script.main(argv)
    assert exit_.value.code == 2 and said in capsys.readouterr().err


def test_machine_line_says_which_kernels_ran(monkeypatch):
    # A CPU's figures depend on the vector width its kernels ran with.
    results = _script("results")
    monkeypatch.delenv("EQUIFAST_CPU_ISA", raising=False)
    cpuinfo = Path("/proc/cpuinfo")
    flags = next((l.split(":", 1)[1].split() for l in cpuinfo.read_text().splitlines()
                  if l.startswith("flags")), []) if cpuinfo.exists() else []
    plain = results.cpu_model()
    if "avx512f" in flags:
        assert plain.endswith(" (AVX-512)")
    elif "avx2" in flags:
        assert plain.endswith(" (AVX2)")
    monkeypatch.setenv("EQUIFAST_CPU_ISA", "baseline")
    assert results.cpu_model() == plain + ", kernels forced to baseline"


def test_fingerprint_benchmark_labels_the_images_it_hashed(capsys):
    # 10 images were labelled "2000 images" beside "all 10 images"
    _script("bench_fingerprint").main(["--classes", "2", "--per-class", "5", "--repeat", "1"])
    lines = [line for line in capsys.readouterr().out.splitlines() if "shard_fingerprint" in line]
    assert len(lines) == 1 and "of all 10 images" in lines[0]


def test_triton_registers_keeps_sm90s_section_for_sm90():
    # a run for sm_80 replaced the recorded sm_90 table
    registers = _script("triton_registers")
    assert registers.section_name(90) == "triton-registers"
    assert registers.section_name(80) == "triton-registers-sm80"


def test_triton_registers_tables_every_kernel(capsys):
    try:
        from equifast.ops_triton import compile_kernels
    except ImportError as err:  # no Triton, or one older than the kernels need
        pytest.skip(str(err))
    _script("triton_registers").main(["--arch", "90", "--no-write"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert len(rows) == len(list(compile_kernels(90)))
    for row in rows:
        registers = int(row.split("|")[2])
        assert 0 < registers <= 255  # what ptxas -v said, read back
    tiles = [row for row in rows if row.startswith("| tiles")]
    assert all(row.rstrip(" |").endswith(("wgmma", "mma.sync", "FMA")) for row in tiles)


def test_setting_restores_the_environment(monkeypatch):
    results = _script("results")
    monkeypatch.setenv("EQUIFAST_TRITON_TILES", "16,64,32,4,3")
    monkeypatch.delenv("EQUIFAST_CUDA_KERNEL", raising=False)
    with results.setting("EQUIFAST_TRITON_TILES", None), results.setting("EQUIFAST_CUDA_KERNEL", "triton"):
        assert "EQUIFAST_TRITON_TILES" not in os.environ
        assert os.environ["EQUIFAST_CUDA_KERNEL"] == "triton"
    assert os.environ["EQUIFAST_TRITON_TILES"] == "16,64,32,4,3"
    assert "EQUIFAST_CUDA_KERNEL" not in os.environ


def test_a_failing_experiment_costs_its_own_column_only(capsys):
    ratios = _script("run_ratios")
    calls = []
    ok = ratios._guarded(lambda: calls.append(1) or 7, "fine")
    assert ok() == 7 and not ok.failed

    def broken():
        calls.append(2)
        raise RuntimeError("no such kernel")
    bad = ratios._guarded(broken, "the Triton kernels")
    assert bad() is None and bad() is None and bad.failed
    assert calls == [1, 2]  # tried once, then left alone
    assert "the Triton kernels failed: RuntimeError('no such kernel')" in capsys.readouterr().out


def test_the_table_takes_a_row_the_profiler_failed_on():
    # the columns came from the first row: a later row without them lost the whole GPU run
    ratios = _script("run_ratios")
    base = dict(n=64, k=64, map="56x56", shift=0, layout="NCHW", p=3136, op=1e-3, bmm=1e-3, ref=1e-2,
                op_bmm=1.0, op_bmm_lo=0.9, op_bmm_hi=1.2, op_own=1.0, ref_op=10.0, gflops=1.0, bmm_gflops=1.0, op_fp32=1e-3,
                op_single=1e-3, op_no_cluster=1e-3, op_triton=1e-3, roofline=5e-4, of_roofline=0.5)
    profiled = dict(base, dev_op=8e-4, dev_bmm=8e-4, dev_fp32=8e-4, dev_single=8e-4,
                    dev_no_cluster=8e-4, dev_triton=8e-4, dev_of_roofline=0.625,
                    dev_single_of_roofline=0.625, dev_triton_of_roofline=0.625)
    lines = ratios.table([profiled, base]).splitlines()
    assert len(lines) == 4 and "op kernels (ms)" in lines[0]
    assert lines[2].count("0.800") == 6 and "62%" in lines[2] and "| 0.90-1.20 |" in lines[2]
    assert lines[3].count("nan") == 9  # the six kernel times and their three roofline shares


def test_each_machine_kind_writes_its_own_section(monkeypatch):
    # sections were per device type: an AVX-512 run replaced the AVX2 machine's table
    results = _script("results")
    monkeypatch.delenv("EQUIFAST_CPU_ISA", raising=False)
    monkeypatch.setattr(results, "_cpu", lambda: ("AMD EPYC", "AVX-512"))
    assert results.machine_kind("cpu") == "cpu-avx512" and results.cpu_model() == "AMD EPYC (AVX-512)"
    # AVX2 kernels forced there replaced the machine's AVX-512 figures
    monkeypatch.setenv("EQUIFAST_CPU_ISA", "x86-64-v3")
    assert results.machine_kind("cpu") == "cpu-avx512-forced-x86-64-v3"
    monkeypatch.setenv("EQUIFAST_CPU_ISA", "x86-64-v4")  # its own: the machine's section
    assert results.machine_kind("cpu") == "cpu-avx512"
    monkeypatch.delenv("EQUIFAST_CPU_ISA")
    monkeypatch.setattr(results, "_cpu", lambda: ("Intel Xeon", "AVX2"))
    assert results.machine_kind("cpu") == "cpu-avx2"
    monkeypatch.setattr(results, "_cpu", lambda: ("ARM", None))
    assert results.machine_kind("cpu") == "cpu-baseline" and results.cpu_model() == "ARM"
