import numpy as np
import pytest
import torch
from monai.transforms import Compose

from cxrscreen.preprocess import (
    PercentileWindow,
    PreprocessSpec,
    base_transforms,
    build_transform,
    placement,
    to_display,
)
from tests.factory import chest_phantom


def test_shape_dtype_and_aspect_padding():
    spec = PreprocessSpec(input_size=224)
    img = chest_phantom(600, 300)  # tall: width is padded
    t = build_transform(spec)(img)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape) == (1, 224, 224)
    disp = to_display(t, spec)
    assert disp[:, :40].max() == 0.0 and disp[:, -40:].max() == 0.0  # padded columns
    assert disp[:, 100:124].max() > 0.5


def test_robust_to_global_intensity_changes():
    spec = PreprocessSpec()
    chain = build_transform(spec)
    img = chest_phantom()
    a = chain(img)
    b = chain(0.2 + 0.5 * img)  # different window / detector gain
    assert float((a - b).abs().max()) < 1e-4


def test_border_crop_removes_burned_in_text():
    spec = PreprocessSpec()
    img = chest_phantom(400, 400)
    marked = img.copy()
    marked[2:12, 2:60] = 1.0  # a burned-in label in the corner, inside the 4 % border
    a, b = build_transform(spec)(img), build_transform(spec)(marked)
    assert float((a - b).abs().max()) < 1e-5


def test_augmentation_changes_images_but_keeps_range():
    spec = PreprocessSpec()
    img = chest_phantom()
    chain = build_transform(spec, augment=True)
    chain.set_random_state(seed=0)
    outs = [chain(img) for _ in range(4)]
    assert any(float((outs[0] - o).abs().max()) > 1e-3 for o in outs[1:])
    assert all(tuple(o.shape) == (1, 224, 224) and torch.isfinite(o).all() for o in outs)


def test_display_roundtrip():
    spec = PreprocessSpec()
    t = build_transform(spec)(chest_phantom())
    d = to_display(t, spec)
    assert d.min() >= 0 and d.max() <= 1 and d.max() > 0.9


def test_percentile_window_matches_monai():
    """``PercentileWindow`` (one np.percentile) gives MONAI's ScaleIntensityRangePercentiles result."""
    import numpy as np
    from monai.transforms import ScaleIntensityRangePercentiles

    from cxrscreen.preprocess import PercentileWindow

    rng = np.random.default_rng(0)
    for shape in [(1, 216, 224), (1, 57, 31)]:
        x = torch.as_tensor(rng.gamma(2.0, 0.2, size=shape).astype(np.float32))
        ref = ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True)(x)
        got = PercentileWindow(lower=1, upper=99, b_min=0.0, b_max=1.0, clip=True)(x)
        assert torch.allclose(torch.as_tensor(got), torch.as_tensor(ref), atol=1e-5)
        assert float(got.min()) == 0.0 and float(got.max()) == 1.0


@pytest.mark.parametrize("shape", [(520, 300), (300, 520), (448, 448), (257, 1031)])
def test_placement_is_the_chains_own_geometry(shape):
    """The film's box in model space is where the chain's geometry puts the film, a mark on the film lands
    where the chain puts it, and to_film undoes to_model."""
    spec = PreprocessSpec(input_size=64, border_crop=0.05)
    pl = placement(shape, spec)
    geometry = Compose([t for t in base_transforms(spec) if not isinstance(t, PercentileWindow)])
    ones = np.asarray(geometry(np.ones(shape, dtype=np.float32)))[0]
    np.testing.assert_array_equal(ones > 0.5, pl.valid)  # padding exactly where the chain pads
    film = np.zeros(shape, dtype=np.float32)
    y, x = shape[0] // 3, shape[1] // 4
    film[y - 30:y + 30, x - 30:x + 30] = 1.0  # a mark, off-centre
    by_chain = np.asarray(geometry(film))[0] > 0.5
    by_placement = pl.to_model(film) > 0.5
    iou = (by_chain & by_placement).sum() / (by_chain | by_placement).sum()
    assert by_chain.any() and iou > 0.8, iou
    back = pl.to_film(pl.to_model(film), pl.crop_film(film).shape)
    assert back.shape == pl.crop_film(film).shape
    assert np.abs(back - pl.crop_film(film)).mean() < 0.05
