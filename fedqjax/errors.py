"""The library's one error type for a settings value outside its range."""


class InvalidSetting(ValueError):
  """`Owner.field=value is invalid; valid: ...`, with the parts as attributes.

  Raised by the library's settings classes (`RoundSpec`, `UNetConfig`,
  `EnergyConfig`, `Scheme`) in their own field names; a program that maps its
  keys onto those fields can name its key from `field` without parsing text.
  """

  def __init__(self, owner: str, field: str, value, valid):
    super().__init__(f"{owner}.{field}={value!r} is invalid; valid: {valid}")
    self.owner, self.field, self.value, self.valid = owner, field, value, valid
