"""Makes the console's admin site (jobs.dashboard.OperationsAdminSite) the default
`admin.site`, so every app's `@admin.register` lands on the site that also serves
the operations dashboard under /admin/operations/."""

from django.contrib.admin.apps import AdminConfig


class ConsoleAdminConfig(AdminConfig):
    default_site = "jobs.dashboard.OperationsAdminSite"
