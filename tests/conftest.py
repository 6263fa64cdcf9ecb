"Shared pytest fixtures."
import pytest

from yolo_voc.synthetic import make_synthetic_voc


@pytest.fixture(scope="session")
def synth_voc(tmp_path_factory):
    "A small synthetic VOCdevkit (40 images of 160x120, 20 classes, seed 0); returns its VOC2007 folder. Do not modify it."
    return make_synthetic_voc(tmp_path_factory.mktemp("synth_voc"), n_images=40, image_size=(160, 120), seed=0)
