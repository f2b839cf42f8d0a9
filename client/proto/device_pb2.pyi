from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RecordRequest(_message.Message):
    __slots__ = ("item", "rating", "timestamp")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    item: int
    rating: float
    timestamp: float
    def __init__(self, item: _Optional[int] = ..., rating: _Optional[float] = ..., timestamp: _Optional[float] = ...) -> None: ...

class RecordReply(_message.Message):
    __slots__ = ("record_id", "interactions")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    record_id: int
    interactions: int
    def __init__(self, record_id: _Optional[int] = ..., interactions: _Optional[int] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("k",)
    K_FIELD_NUMBER: _ClassVar[int]
    k: int
    def __init__(self, k: _Optional[int] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("item", "score")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item: int
    score: float
    def __init__(self, item: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class RecommendReply(_message.Message):
    __slots__ = ("items", "refitted")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REFITTED_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[Recommendation]
    refitted: bool
    def __init__(self, items: _Optional[_Iterable[_Union[Recommendation, _Mapping]]] = ..., refitted: _Optional[bool] = ...) -> None: ...

class PrivacyBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrivacyBudget(_message.Message):
    __slots__ = ("epsilon", "cap", "delta", "unit", "accountant", "steps")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    cap: float
    delta: float
    unit: str
    accountant: str
    steps: int
    def __init__(self, epsilon: _Optional[float] = ..., cap: _Optional[float] = ..., delta: _Optional[float] = ..., unit: _Optional[str] = ..., accountant: _Optional[str] = ..., steps: _Optional[int] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("confirm",)
    CONFIRM_FIELD_NUMBER: _ClassVar[int]
    confirm: bool
    def __init__(self, confirm: _Optional[bool] = ...) -> None: ...

class ForgetReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("device_id", "interactions", "num_items", "model", "has_global_model", "has_private_embedding", "epsilon")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HAS_GLOBAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    HAS_PRIVATE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    interactions: int
    num_items: int
    model: str
    has_global_model: bool
    has_private_embedding: bool
    epsilon: float
    def __init__(self, device_id: _Optional[str] = ..., interactions: _Optional[int] = ..., num_items: _Optional[int] = ..., model: _Optional[str] = ..., has_global_model: _Optional[bool] = ..., has_private_embedding: _Optional[bool] = ..., epsilon: _Optional[float] = ...) -> None: ...
