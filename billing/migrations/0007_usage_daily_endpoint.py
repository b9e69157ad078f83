"""Daily usage rolled up per endpoint too (issue 15: the dashboards show usage by endpoint).

Rows rolled up before this carry "embeddings", the only metered endpoint then besides batch
chunks; `manage.py rollup_usage --day YYYY-MM-DD` recomputes an older day from its request rows
if its batch usage should be told apart.
"""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0006_forget_plaintext_keys_in_sessions"),
    ]

    operations = [
        migrations.RemoveConstraint(
            model_name="usagedaily",
            name="usage_daily_unique",
        ),
        migrations.AddField(
            model_name="usagedaily",
            name="endpoint",
            field=models.CharField(default="embeddings", max_length=64),
        ),
        migrations.AddConstraint(
            model_name="usagedaily",
            constraint=models.UniqueConstraint(
                fields=("api_key", "endpoint", "model", "day"), name="usage_daily_unique"
            ),
        ),
    ]
