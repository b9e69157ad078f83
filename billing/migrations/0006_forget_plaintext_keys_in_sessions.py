"""Drop the new-key plaintexts an older key_create parked in sessions (issue 14.4).

A session row is signed, not encrypted: anyone who can read the table could read a key there.
Sessions that still hold one lose that entry; sessions this server cannot decode (an old secret
key) or that have expired are deleted, since nobody can use them and they may hold one too.
"""

from importlib import import_module

from django.conf import settings
from django.core import signing
from django.db import migrations
from django.utils import timezone

LEGACY_NEW_KEY = "new_key"


def forget_plaintext_keys(apps, schema_editor):
    Session = apps.get_model("sessions", "Session")
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    now = timezone.now()
    Session.objects.filter(expire_date__lt=now).delete()
    for row in Session.objects.iterator():
        store = store_class()
        try:
            data = signing.loads(
                row.session_data,
                salt=store.key_salt,
                serializer=store.serializer,
                fallback_keys=settings.SECRET_KEY_FALLBACKS,
            )
        except signing.BadSignature:
            row.delete()
            continue
        if LEGACY_NEW_KEY in data:
            data.pop(LEGACY_NEW_KEY)
            row.session_data = store.encode(data)
            row.save(update_fields=["session_data"])


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0005_visitor_trials"),
        ("sessions", "0001_initial"),
    ]

    operations = [migrations.RunPython(forget_plaintext_keys, migrations.RunPython.noop)]
