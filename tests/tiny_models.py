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
