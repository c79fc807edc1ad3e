from enum import Enum


class LookupEnum(Enum):
    """An Enum that also resolves by member name, so YAML can say ``type_hint: AdamW``.

    Members are usually registered component classes; ``Kind("AdamW")`` and ``Kind(AdamW)`` give the same
    member. Names match exactly first, then case-insensitively, so ``adamw`` is accepted as well.
    """

    @classmethod
    def _missing_(cls, value: object):
        if not isinstance(value, str):
            return None
        member = cls.__members__.get(value)
        if member is not None:
            return member
        folded = {name.lower(): member for name, member in cls.__members__.items()}
        return folded.get(value.lower())
