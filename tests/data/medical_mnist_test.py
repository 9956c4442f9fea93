"""Medical MNIST (Sparse-Guard's 6-class JPEG set): the class-folder and zip
readers, the tree digest, the documented resize and split, on tiny generated
trees of 64×64 grey JPEGs (the real set is 58,954 files; its pins were
computed from the repository's files)."""

import io
import zipfile

import numpy as np
import pytest

import mi_jax.data
from mi_jax.data import medical_mnist as mm, registry
from mi_jax.data.idx import ChecksumError
from mi_jax.data.sources import FetchContext

PER_CLASS = (5, 4, 5, 5, 5, 5)


def _jpeg(rng) -> bytes:
  from PIL import Image
  # Smooth content, like the scans: a blurred random field.
  field = rng.integers(0, 256, (8, 8)).astype(np.uint8)
  image = Image.fromarray(field).resize((64, 64), Image.Resampling.BICUBIC)
  buffer = io.BytesIO()
  image.save(buffer, format='JPEG', quality=90)
  return buffer.getvalue()


def make_tree(seed=0) -> dict:
  rng = np.random.default_rng(seed)
  return {c: {f'{i:06d}.jpeg': _jpeg(rng) for i in range(n)} for c, n in zip(mm.CLASS_NAMES, PER_CLASS)}


def write_tree(root, files, prefix='resized'):
  for cls, members in files.items():
    (root / prefix / cls).mkdir(parents=True, exist_ok=True)
    for name, data in members.items():
      (root / prefix / cls / name).write_bytes(data)
  (root / prefix / 'CXR' / '._000000.jpeg').write_bytes(b'\x00\x05\x16\x07 AppleDouble')  # ignored


@pytest.fixture
def tiny(monkeypatch):
  files = make_tree()
  monkeypatch.setattr(mm, 'CLASS_SIZES', PER_CLASS)
  monkeypatch.setattr(mm, 'TREE_SHA256', mm.tree_digest(files))
  arrays = mm.build_arrays(files)
  spec = registry.DatasetSpec(
      name='tiny_medical', image_shape=(28, 28, 1), class_names=mm.CLASS_NAMES,
      splits={s: registry.SplitSpec(num_examples=len(l), class_counts=tuple(np.bincount(l, minlength=6)),
                                    images_sha256=mi_jax.data.cache.array_sha256(i),
                                    labels_sha256=mi_jax.data.cache.array_sha256(l))
              for s, (i, l) in arrays.items()},
      raw_files=(), routes=(mm.MedicalMnistRoute(raw_name='tiny_medical'),))
  monkeypatch.setitem(registry.DATASETS, spec.name, spec)
  return files, arrays


def test_spec_documents_the_real_set_and_pins_its_arrays():
  spec = registry.get_spec('medical_mnist')
  assert spec.class_names == ('AbdomenCT', 'BreastMRI', 'CXR', 'ChestCT', 'Hand', 'HeadCT')
  assert spec.image_shape == (28, 28, 1) and spec.arrays_pinned
  assert {s: v.num_examples for s, v in spec.splits.items()} == {'train': 47163, 'test': 11791}
  assert sum(sum(v.class_counts) for v in spec.splits.values()) == 58954
  assert spec.splits['test'].class_counts == (2000, 1791, 2000, 2000, 2000, 2000)
  assert [r.name for r in spec.routes] == [
      'JPEG folders or zip in <data dir>/medical_mnist/raw',
      'download from github.com (apolanco3225/Medical-MNIST-Classification)']


def test_split_is_seeded_stratified_and_20_percent_per_class():
  train, test = mm.split_indices(8954, 1)
  assert len(test) == 1791 and len(train) == 7163
  assert not set(train) & set(test) and len(set(train) | set(test)) == 8954
  again = mm.split_indices(8954, 1)
  np.testing.assert_array_equal(again[1], test)
  assert not np.array_equal(mm.split_indices(10000, 0)[1], mm.split_indices(10000, 2)[1])


def test_decode_resizes_64_to_28_with_pil_bilinear():
  from PIL import Image
  data = _jpeg(np.random.default_rng(3))
  expected = np.asarray(Image.open(io.BytesIO(data)).resize((28, 28), Image.Resampling.BILINEAR))
  got = mm.decode(data, 'x')
  assert got.shape == (28, 28) and got.dtype == np.uint8
  np.testing.assert_array_equal(got, expected)
  small = io.BytesIO()
  Image.new('L', (32, 32)).save(small, format='JPEG')
  with pytest.raises(ValueError, match=r'^y: 32×32 pixels, expected 64×64$'):
    mm.decode(small.getvalue(), 'y')


@pytest.mark.parametrize('layout', ['folder', 'zip'])
def test_prepare_reads_the_tree_as_folders_or_a_zip(tiny, tmp_path, layout):
  files, arrays = tiny
  raw = tmp_path / 'tiny_medical' / 'raw'
  if layout == 'folder':
    write_tree(raw, files)
  else:
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / 'archive.zip', 'w') as zf:
      for cls, members in files.items():
        for name, data in members.items():
          zf.writestr(f'Medical-MNIST-Classification-master/resized/{cls}/{name}', data)
      zf.writestr('__MACOSX/resized/CXR/._000000.jpeg', b'junk')
  result = registry.prepare_dataset('tiny_medical', data_dir=tmp_path)
  assert result.source == 'JPEG folders or zip in <data dir>/tiny_medical/raw'
  images, labels = mi_jax.data.load('tiny_medical', 'test', data_dir=tmp_path)
  assert images.shape == (len(labels), 28, 28, 1)
  assert np.bincount(labels, minlength=6).tolist() == [1, 1, 1, 1, 1, 1]  # round(0.2 * 5), round(0.2 * 4)
  np.testing.assert_array_equal(images, arrays['test'][0])


def test_a_changed_jpeg_fails_the_tree_digest_in_one_line(tiny, tmp_path):
  files, _ = tiny
  data = bytearray(files['Hand']['000002.jpeg'])
  data[len(data) // 2] ^= 0x01  # one bit of the entropy-coded data
  files['Hand']['000002.jpeg'] = bytes(data)
  raw = tmp_path / 'tiny_medical' / 'raw'
  write_tree(raw, files)
  with pytest.raises(ChecksumError) as error:
    mm.MedicalMnistRoute(raw_name='tiny_medical').fetch(registry.get_spec('tiny_medical'), FetchContext(tmp_path))
  assert '\n' not in str(error.value)
  assert str(error.value).startswith(f'{raw}: tree digest ')
  assert 'is not the pinned' in str(error.value) and 'a file differs' in str(error.value)


def _offline(url, dest, timeout_s):
  import socket, urllib.error
  raise urllib.error.URLError(socket.gaierror(-3, 'Temporary failure in name resolution'))


def test_a_missing_class_and_a_missing_tree_are_named(tiny, tmp_path, monkeypatch):
  monkeypatch.setattr(mm.archives, 'download', _offline)
  files, _ = tiny
  del files['HeadCT']['000004.jpeg']
  write_tree(tmp_path / 'tiny_medical' / 'raw', files)
  route = mm.MedicalMnistRoute(raw_name='tiny_medical')
  with pytest.raises(ValueError, match=r"'HeadCT': 4\}.*expected"):
    route.fetch(registry.get_spec('tiny_medical'), FetchContext(tmp_path))
  with pytest.raises(registry.DataUnavailableError) as error:
    mi_jax.data.load('medical_mnist', 'train', data_dir=tmp_path / 'empty')
  message = str(error.value)
  assert '\n' not in message and message.startswith('medical_mnist: no source could provide the data')
  assert '[JPEG folders or zip in <data dir>/medical_mnist/raw] ' in message
  assert ('[download from github.com (apolanco3225/Medical-MNIST-Classification)] github.com is unreachable '
          '(URLError: <urlopen error [Errno -3] Temporary failure in name resolution>); offline: put the '
          'resized/ class folders') in message
  assert message.startswith('medical_mnist: no source could provide the data (the network is unreachable for: '
                            'download from github.com')
