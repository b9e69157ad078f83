from django.db import migrations, models


def mark_visitors(apps, schema_editor):
    # Visitor owners were told apart only by their address until now.
    User = apps.get_model("billing", "User")
    User.objects.filter(email__endswith="@visitors.invalid").update(is_visitor=True)


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0004_user_email_verified_at"),
    ]

    operations = [
        migrations.AddField(
            model_name="user",
            name="is_visitor",
            field=models.BooleanField(default=False),
        ),
        migrations.RunPython(mark_visitors, migrations.RunPython.noop),
        migrations.CreateModel(
            name="VisitorTrialCount",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("scope", models.CharField(max_length=64)),
                ("day", models.DateField()),
                ("count", models.PositiveIntegerField(default=0)),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("scope", "day"), name="visitor_trial_count_scope_day"
                    )
                ],
            },
        ),
    ]
