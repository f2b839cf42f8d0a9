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

class Interaction(_message.Message):
    __slots__ = ("record_id", "item", "timestamp", "rating", "outside_catalogue")
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_CATALOGUE_FIELD_NUMBER: _ClassVar[int]
    record_id: int
    item: int
    timestamp: float
    rating: float
    outside_catalogue: bool
    def __init__(self, record_id: _Optional[int] = ..., item: _Optional[int] = ..., timestamp: _Optional[float] = ..., rating: _Optional[float] = ..., outside_catalogue: _Optional[bool] = ...) -> None: ...

class ListInteractionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListInteractionsReply(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: _containers.RepeatedCompositeFieldContainer[Interaction]
    def __init__(self, interactions: _Optional[_Iterable[_Union[Interaction, _Mapping]]] = ...) -> None: ...

class DeleteInteractionRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: int
    def __init__(self, record_id: _Optional[int] = ...) -> None: ...

class DeleteInteractionReply(_message.Message):
    __slots__ = ("interactions",)
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    interactions: int
    def __init__(self, interactions: _Optional[int] = ...) -> None: ...

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

class ExplainRequest(_message.Message):
    __slots__ = ("item", "k")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    item: int
    k: int
    def __init__(self, item: _Optional[int] = ..., k: _Optional[int] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("item", "score", "evidence")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    EVIDENCE_FIELD_NUMBER: _ClassVar[int]
    item: int
    score: float
    evidence: str
    def __init__(self, item: _Optional[int] = ..., score: _Optional[float] = ..., evidence: _Optional[str] = ...) -> None: ...

class ExplainReply(_message.Message):
    __slots__ = ("reasons",)
    REASONS_FIELD_NUMBER: _ClassVar[int]
    reasons: _containers.RepeatedCompositeFieldContainer[Explanation]
    def __init__(self, reasons: _Optional[_Iterable[_Union[Explanation, _Mapping]]] = ...) -> None: ...

class PrivacyBudgetRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PrivacyBudget(_message.Message):
    __slots__ = ("epsilon", "cap", "delta", "unit", "accountant", "steps", "remaining", "cap_source")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    CAP_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    CAP_SOURCE_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    cap: float
    delta: float
    unit: str
    accountant: str
    steps: int
    remaining: float
    cap_source: str
    def __init__(self, epsilon: _Optional[float] = ..., cap: _Optional[float] = ..., delta: _Optional[float] = ..., unit: _Optional[str] = ..., accountant: _Optional[str] = ..., steps: _Optional[int] = ..., remaining: _Optional[float] = ..., cap_source: _Optional[str] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("device_id",)
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    def __init__(self, device_id: _Optional[str] = ...) -> None: ...

class ForgetReply(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Status(_message.Message):
    __slots__ = ("device_id", "interactions", "num_items", "model", "has_global_model", "has_private_embedding", "epsilon", "epsilon_cap", "epsilon_remaining", "delta", "cap_source", "outside_catalogue")
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    INTERACTIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_ITEMS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HAS_GLOBAL_MODEL_FIELD_NUMBER: _ClassVar[int]
    HAS_PRIVATE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    EPSILON_CAP_FIELD_NUMBER: _ClassVar[int]
    EPSILON_REMAINING_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    CAP_SOURCE_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_CATALOGUE_FIELD_NUMBER: _ClassVar[int]
    device_id: str
    interactions: int
    num_items: int
    model: str
    has_global_model: bool
    has_private_embedding: bool
    epsilon: float
    epsilon_cap: float
    epsilon_remaining: float
    delta: float
    cap_source: str
    outside_catalogue: int
    def __init__(self, device_id: _Optional[str] = ..., interactions: _Optional[int] = ..., num_items: _Optional[int] = ..., model: _Optional[str] = ..., has_global_model: _Optional[bool] = ..., has_private_embedding: _Optional[bool] = ..., epsilon: _Optional[float] = ..., epsilon_cap: _Optional[float] = ..., epsilon_remaining: _Optional[float] = ..., delta: _Optional[float] = ..., cap_source: _Optional[str] = ..., outside_catalogue: _Optional[int] = ...) -> None: ...

class VerifyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class VerifyReply(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: int
    def __init__(self, records: _Optional[int] = ...) -> None: ...
