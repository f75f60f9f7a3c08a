//! Cron schedules: classic 5-field cron to systemd `OnCalendar=` lines and next-run times.
