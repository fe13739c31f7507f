"""FID / KID between Fashion-MNIST train and test with the JAX FID Inception (Heusel et al. 2017).

Usage:
  python benchmarks/fid_fashion_mnist.py --n 10000 [--batch_size 50] [--data_dir DIR]

Reads the idx .gz files of the Debian package dataset-fashion-mnist
(/usr/share/datasets/fashion-mnist); uses the first n images of each split.
Note FID is biased upwards for n < 2048 (rank-deficient covariance): compare
numbers only at equal n.
"""

import argparse
import gzip
import os
import time

import numpy as np

from fedqjax import metrics


def read_images(path: str) -> np.ndarray:
  with gzip.open(path, "rb") as f:
    raw = f.read()
  n, h, w = np.frombuffer(raw, ">u4", 3, 4)
  return np.frombuffer(raw, np.uint8, offset=16).reshape(
    n, h, w, 1
  )  # [n, 28, 28, 1]


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--n", type=int, default=10000)
  p.add_argument("--batch_size", type=int, default=50)
  p.add_argument("--data_dir", default="/usr/share/datasets/fashion-mnist")
  args = p.parse_args()
  train = read_images(
    os.path.join(args.data_dir, "train-images-idx3-ubyte.gz")
  )[: args.n]
  test = read_images(os.path.join(args.data_dir, "t10k-images-idx3-ubyte.gz"))[
    : args.n
  ]
  t0 = time.time()
  fn = metrics.make_feature_fn()
  feats = []
  for name, imgs in (("train", train), ("test", test)):
    t = time.time()
    feats.append(
      metrics.compute_activations(
        imgs, batch_size=args.batch_size, feature_fn=fn
      )
    )
    print(f"{name}: {len(imgs)} images in {time.time() - t:.1f}s", flush=True)
  t_feat = time.time() - t0
  t = time.time()
  fid = metrics.fid_from_features(*feats)
  t_fid = time.time() - t
  fid_eigh = metrics.fid_from_features(*feats, method="eigh")
  t = time.time()
  kid_mean, kid_std = metrics.kid(*feats)
  t_kid = time.time() - t
  print(
    f"n={args.n} FID(train, test)={fid:.4f} (eigh route {fid_eigh:.4f}) "
    f"KID={kid_mean:.6f} +- {kid_std:.6f}"
  )
  print(
    f"time: features {t_feat:.1f}s ({t_feat / (2 * args.n):.3f}s/image), "
    f"FID sqrtm {t_fid:.1f}s, KID {t_kid:.1f}s"
  )


if __name__ == "__main__":
  main()
