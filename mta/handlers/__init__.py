"""Python email handlers: `async def email(message, env, ctx)` (MISSION R7, docs/handlers.md).

What a handler imports:

    from mta.handlers import EmailMessage, MimeMessage, EmailMessageBuilder, MtaError
"""

from mta.errors import MtaError
from mta.handlers.message import (
    EmailMessage,
    EmailSendResult,
    ForwardableEmailMessage,
    Headers,
    MimeMessage,
)
from mta.sending.binding import EmailMessageBuilder

__all__ = ["EmailMessage", "EmailMessageBuilder", "EmailSendResult",
           "ForwardableEmailMessage", "Headers", "MimeMessage", "MtaError"]
