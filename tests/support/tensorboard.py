"""TensorBoard event files as the tests read them."""


def event_tags(path):
  """Every scalar, tensor and image tag of the event files under `path`."""
  from tensorboard.backend.event_processing import event_accumulator

  ea = event_accumulator.EventAccumulator(
    path,
    size_guidance={
      event_accumulator.SCALARS: 0,
      event_accumulator.TENSORS: 0,
      event_accumulator.IMAGES: 0,
    },
  )
  ea.Reload()
  tags = ea.Tags()
  return (
    set(tags.get("scalars", []))
    | set(tags.get("tensors", []))
    | set(tags.get("images", []))
  )
