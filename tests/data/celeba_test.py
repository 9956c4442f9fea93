"""CelebA (GMI / KEDMI private-public identity split): list and identity parsing,
the crop + resize on real face crops (scikit-image's LFW subset, placed where
CelebA's aligned faces sit), folder and zip images, the pins and the errors.
A tiny generated CelebA tree stands in for the real one; nothing is downloaded."""

import dataclasses
import io
import zipfile

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import archives, celeba, prepare, registry
from mi_jax.data.idx import ChecksumError
from mi_jax.data.sources import FetchContext

# identity -> (train files, test files); identities 40 and 41 are public only.
PRIVATE = {2880: (1, 2), 2937: (3, 4), 8692: (5, 6)}
TEST = {2880: (7,), 2937: (8,), 8692: (9,)}
PUBLIC = {40: (10, 11), 41: (12,)}


def _faces():
  from skimage import data as skdata
  return skdata.lfw_subset()  # 200 real 25×25 grey face crops (LFW), floats in [0, 1]


def _aligned_jpeg(face: np.ndarray) -> tuple[bytes, np.ndarray]:
  """A 178×218 'aligned' RGB image with ``face`` (upscaled to 108²) in the crop box; and that 108² face."""
  from PIL import Image
  face108 = np.asarray(Image.fromarray(np.round(face * 255).astype(np.uint8)).resize((108, 108), Image.Resampling.BICUBIC))
  canvas = np.full((218, 178), 128, np.uint8)
  canvas[55:163, 35:143] = face108
  buffer = io.BytesIO()
  Image.fromarray(np.stack([canvas] * 3, -1)).save(buffer, format='JPEG', quality=95)
  return buffer.getvalue(), face108


def _name(i):
  return f'{i:06d}.jpg'


def make_celeba(raw, *, crlf=True, zipped=False):
  """Writes images, identity_CelebA.txt and the three lists into ``raw``; returns (faces by file, pins)."""
  raw.mkdir(parents=True, exist_ok=True)
  faces = _faces()
  identity_of = {}
  for identity, files in [*PRIVATE.items(), *TEST.items(), *PUBLIC.items()]:
    identity_of.update({_name(i): identity for i in files})
  images, truth = {}, {}
  for i, name in enumerate(sorted(identity_of)):
    images[name], truth[name] = _aligned_jpeg(faces[i])
  if zipped:
    with zipfile.ZipFile(raw / 'img_align_celeba.zip', 'w') as zf:
      for name, data in images.items():
        zf.writestr(f'img_align_celeba/{name}', data)
  else:
    (raw / 'img_align_celeba').mkdir()
    for name, data in images.items():
      (raw / 'img_align_celeba' / name).write_bytes(data)
  end = '\r\n' if crlf else '\n'
  (raw / 'identity_CelebA.txt').write_text(''.join(f'{n} {identity_of[n]}\n' for n in sorted(identity_of)))
  labels = {identity: k for k, identity in enumerate(PRIVATE)}
  lists = {
      'trainset.txt': ''.join(f'{_name(i)} {labels[d]}{end}' for d, fs in PRIVATE.items() for i in fs),
      'testset.txt': ''.join(f'{_name(i)} {labels[d]}{end}' for d, fs in TEST.items() for i in fs),
      'ganset.txt': ''.join(f'{_name(i)}{end}' for fs in PUBLIC.values() for i in fs),
  }
  for name, text in lists.items():
    (raw / name).write_bytes(text.encode())
  pins = {split: dataclasses.replace(celeba.LISTS[split], digest=archives.file_digest(raw / name, 'sha256', 'lines'))
          for split, name in zip(('train', 'test', 'public'), lists)}
  return truth, pins


def tiny_route(raw, pins, **kwargs):
  identity = dataclasses.replace(celeba.IDENTITY, digest=archives.file_digest(raw / 'identity_CelebA.txt', 'md5'))
  zipped = raw / 'img_align_celeba.zip'
  images_zip = dataclasses.replace(celeba.IMAGES_ZIP, digest=archives.file_digest(zipped, 'md5')
                                   if zipped.exists() else celeba.IMAGES_ZIP.digest)
  return celeba.CelebaRoute(lists=tuple(pins.items()), identity=identity, images_zip=images_zip,
                            raw_name='tiny_celeba', **kwargs)


def register_tiny(monkeypatch, route, resolution=64):
  spec = dataclasses.replace(
      celeba.celeba_spec(resolution, name='tiny_celeba'),
      splits={'train': registry.SplitSpec(6), 'test': registry.SplitSpec(3), 'public': registry.SplitSpec(3)},
      routes=(route,))
  monkeypatch.setitem(registry.DATASETS, spec.name, spec)
  return spec


def test_spec_pins_the_kedmi_lists_and_torchvision_md5s():
  spec = registry.get_spec('celeba')
  assert spec.image_shape == (64, 64, 3) and spec.num_classes == 1000 and not spec.arrays_pinned
  assert {s: v.num_examples for s, v in spec.splits.items()} == {'train': 27018, 'test': 3009, 'public': 30000}
  pins = {p.name: p for p in spec.raw_pins}
  assert pins['trainset.txt'].digest.startswith('fd758026') and pins['trainset.txt'].kind == 'lines'
  assert pins['trainset.txt'].url.startswith('https://raw.githubusercontent.com/SCccc21/Knowledge-Enriched-DMI/')
  assert pins['identity_CelebA.txt'].digest == '32bd1bd63d3c78cd57e08160ec5ed1e2'
  assert pins['img_align_celeba.zip'].digest == '00d2c5bc6d35e252742224ab0c1e8fcb'
  assert [r.download_lists for r in spec.routes] == [False, True]


def test_crlf_and_lf_copies_of_a_list_have_one_pin():
  assert archives.normalize_lines(b'a.jpg 0\r\nb.jpg 1\r\n') == archives.normalize_lines(b'a.jpg 0\nb.jpg 1')


@pytest.mark.parametrize('zipped', [False, True])
def test_real_faces_go_through_the_crop_and_resize(monkeypatch, tmp_path, zipped):
  raw = tmp_path / 'tiny_celeba' / 'raw'
  truth, pins = make_celeba(raw, zipped=zipped)
  register_tiny(monkeypatch, tiny_route(raw, pins))
  assert prepare.main(['tiny_celeba', '--data-dir', str(tmp_path)]) == 0
  images, labels = mi_jax.data.load('tiny_celeba', 'train', data_dir=tmp_path)
  assert images.shape == (6, 64, 64, 3) and images.dtype == np.uint8
  assert labels.tolist() == [0, 0, 1, 1, 2, 2]
  # The crop box holds exactly the face: the 64² result is the face resized (up to JPEG noise).
  expected = archives.resize_uint8(truth[_name(1)], (64, 64)).astype(int)
  assert np.abs(images[0, ..., 0].astype(int) - expected).mean() < 3
  assert np.abs(images[0, ..., 0].astype(int) - archives.resize_uint8(truth[_name(3)], (64, 64))).mean() > 10
  public_images, public_labels = mi_jax.data.load('tiny_celeba', 'public', data_dir=tmp_path)
  assert public_labels.tolist() == [40, 40, 41]  # the CelebA identities of the public images
  assert mi_jax.data.load('tiny_celeba', 'test', data_dir=tmp_path)[1].tolist() == [0, 1, 2]


def test_other_resolutions_register_and_resize(monkeypatch, tmp_path):
  raw = tmp_path / 'tiny_celeba' / 'raw'
  truth, pins = make_celeba(raw, crlf=False)
  spec = register_tiny(monkeypatch, tiny_route(raw, pins, resolution=32), resolution=32)
  arrays = spec.routes[0].fetch(spec, FetchContext(tmp_path))
  assert arrays['test'][0].shape == (3, 32, 32, 3)
  monkeypatch.delitem(registry.DATASETS, 'celeba_128', raising=False)
  assert mi_jax.data.register_celeba(128).image_shape == (128, 128, 3)
  assert mi_jax.data.register_celeba(128) is registry.DATASETS['celeba_128']  # once
  with pytest.raises(ValueError, match=r'resolution must be an integer in \[8, 216\], got 4'):
    celeba.celeba_spec(4)


def test_a_list_that_does_not_match_the_identities_is_refused(monkeypatch, tmp_path):
  raw = tmp_path / 'tiny_celeba' / 'raw'
  _, pins = make_celeba(raw)
  text = (raw / 'trainset.txt').read_text().replace(f'{_name(3)} 1', f'{_name(3)} 0')
  (raw / 'trainset.txt').write_text(text)
  pins['train'] = dataclasses.replace(pins['train'], digest=archives.file_digest(raw / 'trainset.txt', 'sha256', 'lines'))
  spec = register_tiny(monkeypatch, tiny_route(raw, pins))
  with pytest.raises(ValueError, match=r'trainset.txt: label 0 holds CelebA identities 2880 and 2937 \(000003.jpg\)'):
    spec.routes[0].fetch(spec, FetchContext(tmp_path))


def test_an_edited_list_fails_its_pin_in_one_line(monkeypatch, tmp_path):
  raw = tmp_path / 'tiny_celeba' / 'raw'
  _, pins = make_celeba(raw)
  (raw / 'testset.txt').write_text((raw / 'testset.txt').read_text().replace(' 2', ' 1'))
  spec = register_tiny(monkeypatch, tiny_route(raw, pins))
  with pytest.raises(ChecksumError) as error:
    spec.routes[0].fetch(spec, FetchContext(tmp_path))
  assert '\n' not in str(error.value)
  assert str(error.value).startswith(f'{raw / "testset.txt"}: sha256 ')
  assert 'is not the sha256 pinned by mi_jax' in str(error.value)


def test_missing_lists_are_downloaded_by_the_second_route(monkeypatch, tmp_path, capsys):
  raw = tmp_path / 'tiny_celeba' / 'raw'
  _, pins = make_celeba(raw)
  served = {n: (raw / n).read_bytes() for n in ('trainset.txt', 'testset.txt', 'ganset.txt')}
  for name in served:
    (raw / name).unlink()

  def fake_download(url, dest, timeout_s):
    dest.write_bytes(served[dest.name])

  monkeypatch.setattr(archives, 'download', fake_download)
  spec = register_tiny(monkeypatch, tiny_route(raw, pins))
  spec = dataclasses.replace(spec, routes=(tiny_route(raw, pins), tiny_route(raw, pins, download_lists=True)))
  monkeypatch.setitem(registry.DATASETS, spec.name, spec)
  result = registry.prepare_dataset('tiny_celeba', data_dir=tmp_path, log=print)
  assert result.source.endswith('+ split lists from raw.githubusercontent.com')
  out = capsys.readouterr().out
  assert 'downloading https://raw.githubusercontent.com/SCccc21/Knowledge-Enriched-DMI/8b81c960' in out
  assert 'final arrays not pinned' in out


def test_without_images_the_error_names_each_route_and_what_to_fetch(tmp_path, monkeypatch):
  def offline(url, dest, timeout_s):
    raise AssertionError('no download may start before the images are there')

  monkeypatch.setattr(archives, 'download', offline)
  (tmp_path / 'celeba' / 'raw').mkdir(parents=True)
  (tmp_path / 'celeba' / 'raw' / 'identity_CelebA.txt').write_text('000001.jpg 1\n')
  with pytest.raises(registry.DataUnavailableError) as error:
    mi_jax.data.load('celeba', 'train', data_dir=tmp_path)
  message = str(error.value)
  assert '\n' not in message and message.startswith('celeba: no source could provide the data: ')
  raw = tmp_path / 'celeba' / 'raw'
  assert (f'[images, identities and split lists in <data dir>/celeba/raw] {raw} has neither img_align_celeba/ '
          'nor img_align_celeba.zip (from the CelebA site') in message
  assert '[images in <data dir>/celeba/raw + split lists from raw.githubusercontent.com] ' in message


def test_prepare_help_lists_every_dataset(capsys):
  with pytest.raises(SystemExit):
    prepare.main(['--help'])
  out = capsys.readouterr().out
  for name in ('mnist', 'fashion_mnist', 'cifar10', 'medical_mnist', 'pathmnist', 'organamnist',
               'bloodmnist', 'dermamnist', 'celeba', '--celeba-resolution'):
    assert name in out
