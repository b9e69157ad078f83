from django.apps import AppConfig
from django.conf import settings

from embeddings_site.data_dir import data_dirs_create


class SiteConfig(AppConfig):
    name = "embeddings_site"
    verbose_name = "Site"

    def ready(self) -> None:
        # Every process (manage.py, gunicorn, Celery, the tests) sets Django up before it
        # opens the database, whose SQLite file lives in DATA_DIR.
        data_dirs_create(settings.DATA_DIR, settings.STATIC_ROOT)
