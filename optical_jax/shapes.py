"""Padded sequence lengths: one small fixed set, so jit compiles a bounded number of times."""

LENGTH_BUCKETS = (16, 32, 64, 128, 256, 512)


def bucket_for(length: int, max_length: int) -> int:
  """The smallest length bucket holding `length` tokens, capped at `max_length`: padding to
  these keeps the number of compiled shapes bounded."""
  for bucket in LENGTH_BUCKETS:
    if length <= bucket:
      return min(bucket, max_length)
  return max_length
