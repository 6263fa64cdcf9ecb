"""What a user sees while training: no library messages that tell them nothing (Lightning's note that a checkpoint is
saved with `weights_only=False`, Lightning's `_pytree` deprecation warning), while every other warning still shows:
Lightning's useful ones, and the user's own, even one worded like the silenced one.
"""
import os
import shutil
import subprocess
import sys
import warnings

USER_CALLBACKS = '''
import warnings
from pytorch_lightning.callbacks import Callback

class Loud(Callback):
    "Warns at the start of fit, as a user's own code might."
    def on_fit_start(self, trainer, pl_module):
        warnings.warn("my own warning from on_fit_start", UserWarning)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, in my own code", FutureWarning)
'''


def test_fit_prints_no_library_noise_and_keeps_other_warnings(tmp_path):
    (tmp_path / "user_callbacks.py").write_text(USER_CALLBACKS)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "YOLO_VOC_RUN_PLAN")}
    env.update(YOLO_VOC_CACHE=str(tmp_path / "cache"), PYTHONPATH=os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")]))
    args = ["fit", "--model.width_mult", "0.125", "--model.depth_mult", "0.33", "--data.image_size", "64",
            "--data.batch_size", "4", "--data.num_workers", "0", "--data.synthetic_images", "16",
            "--data.synthetic_image_size", "[96, 80]", "--data.synthetic_classes", "3", "--trainer.max_epochs", "1",
            "--trainer.limit_val_batches", "1", "--lr_find_steps", "5",  # the LR finder saves and restores a checkpoint
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks+=user_callbacks.Loud",
            "--trainer.log_every_n_steps", "50",  # more than an epoch's steps: Lightning warns, and should
            "--trainer.default_root_dir", tmp_path / "run"]
    r = subprocess.run([shutil.which("yolo-voc"), *map(str, args)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "run/lr_find.json").exists()  # the path that printed the `weights_only` note ran
    assert "weights_only" not in r.stderr + r.stdout
    assert "utilities/_pytree.py" not in r.stderr
    # the rest still shows: the user's own warnings (also the one worded like Lightning's), and Lightning's advice
    assert "user_callbacks.py" in r.stderr and "UserWarning: my own warning from on_fit_start" in r.stderr
    assert "FutureWarning: `isinstance(treespec, LeafSpec)` is deprecated, in my own code" in r.stderr
    assert "is smaller than the logging interval Trainer(log_every_n_steps=50)" in r.stderr


def test_importing_training_changes_no_warning_filter():
    "The filter is set when a run is put together (`YoloCLI`, `make_trainer`), not by importing the library."
    code = ("import warnings; import yolo_voc.callbacks, yolo_voc.cli; "
            "ours = [f for f in warnings.filters if f[1] is not None and 'LeafSpec' in f[1].pattern]; assert not ours, ours; "
            "yolo_voc.callbacks.quiet_lightning_tips(); assert [f for f in warnings.filters if f[1] and 'LeafSpec' in f[1].pattern]")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]


def test_make_trainer_filters_only_lightnings_pytree_warning(tmp_path):
    from yolo_voc.callbacks import make_trainer
    make_trainer(tmp_path, accelerator="cpu", enable_progress_bar=False)
    message = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()` instead."
    with warnings.catch_warnings(record=True) as caught:
        for module in ("pytorch_lightning.utilities._pytree", "lightning.pytorch.utilities._pytree", "my_package.trees"):
            warnings.warn_explicit(message, FutureWarning, f"{module.replace('.', '/')}.py", 21, module=module)
    assert [w.filename for w in caught] == ["my_package/trees.py"]
