"""google-auth credentials from the settings: an access token, a refreshable user grant, or a
service account (optionally acting as a user through domain-wide delegation).

- token only: used as is; when Google refuses it, nothing can renew it (``AuthError``).
- refresh_token + client_id/client_secret (+ token_uri): an expired or revoked access token is
  renewed by google-auth on the 401 (``AuthorizedHttp`` refreshes and replays the request once).
- service_account_file: a JWT grant for ``scopes`` (read-only for the connector, events for the
  writer); ``subject`` acts as that user.
"""

from __future__ import annotations

from typing import Any

from google.oauth2 import credentials as user_credentials
from google.oauth2 import service_account

from connectors.errors import ConfigError
from connectors.google_calendar.errors import SOURCE
from connectors.settings import GoogleCalendarSettings

READONLY_SCOPE = "https://www.googleapis.com/auth/calendar.readonly"
EVENTS_SCOPE = "https://www.googleapis.com/auth/calendar.events"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"  # noqa: S105  # an endpoint, not a secret


def build_credentials(
    settings: GoogleCalendarSettings,
    *,
    subject: str | None = None,
    scopes: tuple[str, ...] = (READONLY_SCOPE,),
) -> Any:
    """Fresh google-auth credentials (one object per HTTP client: they are not shared across threads).

    ``subject`` overrides ``settings.subject`` for a service account (per-calendar delegation).
    """
    if settings.service_account_file:
        try:
            creds = service_account.Credentials.from_service_account_file(  # type: ignore[no-untyped-call]  # google-auth leaves it unannotated
                settings.service_account_file, scopes=list(scopes)
            )
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                SOURCE,
                f"service_account_file {settings.service_account_file!r} is not a readable service "
                f"account key ({type(exc).__name__})",
            ) from exc
        who = subject or settings.subject
        return creds.with_subject(who) if who else creds
    token = settings.token.get_secret_value() if settings.token else None
    if settings.refresh_token:
        return user_credentials.Credentials(  # type: ignore[no-untyped-call]  # google-auth leaves it unannotated
            token=token,
            refresh_token=settings.refresh_token.get_secret_value(),
            token_uri=settings.token_uri or GOOGLE_TOKEN_URI,
            client_id=settings.client_id,
            client_secret=settings.client_secret.get_secret_value() if settings.client_secret else None,
        )
    return user_credentials.Credentials(token=token)  # type: ignore[no-untyped-call]  # unannotated upstream
