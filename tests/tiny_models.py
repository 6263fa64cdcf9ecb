"A tiny YOLOv3 shared by the predict and app tests."
import torch

from yolo_voc.model import YOLOv3

NAMES = ["circle", "square", "triangle"]
CFG = dict(num_classes=3, width_mult=0.25, depth_mult=0.33)


def tiny_model(seed: int = 0) -> YOLOv3:
    "A tiny YOLOv3 whose prediction heads give a handful of distinct detections on noise images."
    torch.manual_seed(seed)
    model = YOLOv3(**CFG)
    # a livelier head than the init (objectness prior 0.01), so that some detections pass conf=0.05
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == "PredictionConv":
                m.conv.weight.normal_(0, 0.3)
                m.scale.view(3, -1)[:, [0, 5, 6, 7]] = 3e4  # the features are ~1e-5 at init: make scores vary
                m.conv.bias.zero_()
                m.shift.view(3, -1)[:, 0] = -6.5  # a few confident anchors, most not
    return model.eval()


def tiny_datamodule(class_names, image_size: int = 128):
    "The synthetic set at `image_size`, 16 images of `class_names`, read in the test process (no workers)."
    from yolo_voc.data import VOCDataModule
    return VOCDataModule(None, image_size=image_size, batch_size=4, num_workers=0, synthetic_images=16, class_names=class_names)


def tiny_module(class_names, image_size: int = 128, **kw):
    "`tiny_model` (lively heads) in a YoloModule with `class_names`; `kw` are YoloModule options."
    from yolo_voc.train import YoloModule
    m = YoloModule(**CFG, class_names=class_names, image_size=image_size, max_lr=1e-3, conf_threshold=0.05, **kw)
    m.model.load_state_dict(tiny_model().state_dict())
    return m
