import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from jobs.models import ApiKey, Tenant


class Command(BaseCommand):
    help = "Development only: a demo tenant, a fresh API key and an admin user, printed."

    def handle(self, *args: Any, **options: Any) -> None:
        tenant, _ = Tenant.objects.get_or_create(slug="demo", defaults={"name": "Demo tenant"})
        _, key = ApiKey.generate(tenant, name="make run")
        password = secrets.token_urlsafe(12)
        user, _ = get_user_model().objects.get_or_create(username="admin", defaults={"email": "admin@localhost"})
        user.is_staff = user.is_superuser = True
        user.set_password(password)
        user.save()
        self.stdout.write(f"Demo tenant:  {tenant.slug}")
        self.stdout.write(f"API key:      {key}")
        self.stdout.write(f"Admin login:  admin / {password}")
        self.stdout.write(
            "Try:          curl -s -H 'Authorization: Bearer "
            + key
            + "' -H 'Content-Type: application/json' -d '{\"task\":\"examples.echo\",\"payload\":{\"hi\":1}}' "
            "http://127.0.0.1:8000/api/v1/jobs"
        )
        self.stdout.write("Or:           python manage.py submit_job demo examples.echo '{\"hi\": 1}' --wait")
