"""The crate's module graph has no cycle and follows the order of src/lib.rs."""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_modules_depend_one_way_in_the_order_lib_rs_lists_them():
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "module_graph.py")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "imports of a module declared later in lib.rs: none" in out.stdout, out.stdout
    assert "cycles: none" in out.stdout, out.stdout
