"""The console in a real browser against a live server and a real Celery worker:
log in, open the dashboard, follow a stuck link, requeue a dead letter and watch
it succeed. Screenshots go to artifacts/screenshots/."""

from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from django.db import connection
from django.db.models.functions import Now
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from batches import lifecycle as batches
from batches.models import Batch
from jobs import sweeper
from jobs.models import Job, Tenant
from tests.admin.browser import chromium, screenshot
from tests.admin.conftest import make_job
from tests.workers import Worker, wait_until



@pytest.fixture
def sweeper_paused(transactional_db: None) -> Iterator[None]:
    """Hold the sweep lock as if another sweeper were busy, so a worker's startup
    sweep skips and nothing repairs the stuck job behind the operator's back."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", list(sweeper.SWEEP_LOCK))
    yield
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_advisory_unlock(%s, %s)", list(sweeper.SWEEP_LOCK))


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    driver = chromium()
    yield driver
    driver.quit()


def run_action(driver: webdriver.Chrome, job: Job, action: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f"input.action-select[value='{job.id}']").click()
    Select(driver.find_element(By.NAME, "action")).select_by_value(action)
    driver.find_element(By.CSS_SELECTOR, "button[name=index]").click()


def text_of(driver: webdriver.Chrome, selector: str) -> str:
    return driver.find_element(By.CSS_SELECTOR, selector).text


@pytest.mark.slow
def test_operator_follows_a_stuck_link_and_requeues_a_dead_letter_that_then_succeeds(
    live_server: object, browser: webdriver.Chrome, sweeper_paused: None, worker_factory: Callable[..., Worker],
    tenant_factory: Callable[..., Tenant], django_user_model: type,
) -> None:
    django_user_model.objects.create_superuser("ops", "ops@example.com", "correct horse battery")  # type: ignore[attr-defined]
    tenant = tenant_factory(slug="acme", concurrency_limit=4)
    other = tenant_factory(slug="globex")
    # Real states, made before the worker starts so it cannot race the setup.
    dead = make_job(tenant, "failed")
    stuck = make_job(tenant, "running")
    Job.objects.filter(id=stuck.id).update(lease_expires_at=Now() - timedelta(seconds=30))
    for _ in range(2):
        make_job(tenant, "succeeded")
    batch = batches.create_batch(  # another tenant's, so acme's row below stays exact while it runs
        other, task="examples.echo", run_count=30, items=[{"payload": {"i": i}} for i in range(30)]
    ).batch
    worker_factory()  # no beat; its startup sweep skips (sweeper_paused)
    base = str(live_server)

    # Log in.
    browser.get(base + "/admin/login/?next=/admin/operations/")
    browser.find_element(By.NAME, "username").send_keys("ops")
    browser.find_element(By.NAME, "password").send_keys("correct horse battery")
    browser.find_element(By.CSS_SELECTOR, "input[type=submit]").click()
    wait_until(lambda: "/admin/operations/" in browser.current_url, 15, what="dashboard after login")

    # The dashboard: the stuck place counts 1, and the page refreshes itself in place.
    assert "Stuck places" in browser.page_source
    row = browser.find_element(By.CSS_SELECTOR, "tr[data-place=running_lease_expired]")
    assert row.find_elements(By.CSS_SELECTOR, "td.num")[0].text == "1"
    assert text_of(browser, "tr[data-tenant=acme]").split()[:5] == ["acme", "0", "0", "1", "0"]
    browser.execute_script("window.bpNoReload = true")
    first = browser.find_element(By.ID, "bp-updated").get_attribute("data-at")
    wait_until(lambda: browser.find_element(By.ID, "bp-updated").get_attribute("data-at") != first,
               20, interval=0.5, what="dashboard refresh")
    assert browser.execute_script("return window.bpNoReload") is True  # refreshed without a reload
    screenshot(browser, "dashboard-stuck")

    # Follow the stuck link: the filtered changelist lists the stuck job.
    browser.find_element(By.ID, "bp-place-running_lease_expired").click()
    wait_until(lambda: "stuck=running_lease_expired" in browser.current_url, 15, what="stuck changelist")
    ids = [a.text for a in browser.find_elements(By.CSS_SELECTOR, "#result_list th.field-short_id a")]
    assert ids == [str(stuck.id)[:8]]

    # Repair it from there: the diagnosis names the cause, the sweeper's repair requeues it.
    run_action(browser, stuck, "repair_jobs")
    wait_until(lambda: "Repaired 1 job: running with an expired lease" in browser.page_source, 15,
               what="repair message")

    # Requeue the dead letter from the dead-letter view.
    browser.get(base + "/admin/jobs/job/?dead_letter=yes")
    run_action(browser, dead, "requeue_jobs")
    wait_until(lambda: "Requeued 1 job." in browser.page_source, 15, what="requeue message")

    # The real worker runs it: the job page shows it succeeded, with a second execution.
    def ran() -> bool:
        return Job.objects.get(id=dead.id).status == "succeeded"

    try:
        wait_until(ran, 60, interval=0.2, what="requeued job to succeed")
    except AssertionError as exc:
        events = list(Job.objects.get(id=dead.id).events.values_list("type", flat=True))
        raise AssertionError(f"{exc}; its events: {events}") from None
    browser.get(f"{base}/admin/jobs/job/{dead.id}/change/")
    assert text_of(browser, ".field-status_badge .readonly") == "succeeded"
    executions = browser.find_elements(By.CSS_SELECTOR, "#executions-group tbody tr.has_original, "
                                                        "#executions-group tbody tr.form-row")
    assert len(executions) == 2
    assert "requeued" in text_of(browser, "#events-group")
    screenshot(browser, "job")

    # The batch ran on the same worker: its page shows the progress and the first children.
    wait_until(lambda: Batch.objects.get(id=batch.id).status == "completed", 60, interval=0.2, what="batch done")
    browser.get(f"{base}/admin/batches/batch/{batch.id}/change/")
    assert text_of(browser, ".field-status_badge .readonly") == "completed"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".field-children_shown tbody tr")) == 20
    screenshot(browser, "batch")

    # Back on the dashboard: nothing stuck, the repair listed with its cause.
    browser.get(base + "/admin/operations/")
    assert text_of(browser, "#bp-stuck-total") == "0"
    assert "lease_expired" in text_of(browser, "#bp-repairs")
    screenshot(browser, "dashboard")
