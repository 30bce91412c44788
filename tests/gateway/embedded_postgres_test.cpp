#include "yilian/gateway/embedded_postgres.hpp"

#include <doctest/doctest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <string>

using yilian::gateway::embedded_postgres;
using yilian::gateway::embedded_postgres_options;
namespace fs = std::filesystem;

namespace {

// A data directory of its own, reachable by the postgres user when we run as root (the test's
// working directory is in the build tree; /tmp otherwise).
fs::path scratch_dir(const std::string& name) {
  fs::path base = fs::current_path();
  fs::path dir = base / ("embedded-pg-" + name + "-" + std::to_string(getpid()));
  fs::remove_all(dir);
  return dir;
}

std::string count_rows(const std::string& url) {
  pqxx::connection c(url);
  pqxx::nontransaction tx(c);
  return tx.exec("SELECT count(*) FROM kept")[0][0].as<std::string>();
}

std::string cluster_dir_of(const fs::path& data_dir) {
  fs::path note = data_dir / "postgres.location";
  if (fs::exists(note)) {
    std::ifstream in(note);
    std::string s;
    std::getline(in, s);
    return s;
  }
  return (data_dir / "postgres").string();
}

}  // namespace

TEST_CASE("embedded_postgres: start, lock, restart keeps data, recovery after a crash") {
  if (!fs::exists("/usr/lib/postgresql/15/bin/pg_ctl")) {
    MESSAGE("skipped: PostgreSQL 15 is not installed");
    return;
  }
  fs::path dir = scratch_dir("lifecycle");
  embedded_postgres_options options;
  options.data_dir = dir;
  std::string url;
  {
    embedded_postgres pg(options);
    pg.start();
    CHECK(pg.running());
    url = pg.url();
    CHECK(url.rfind("postgresql:///yilian?host=", 0) == 0);
    {
      pqxx::connection c(url);
      pqxx::work tx(c);
      tx.exec("CREATE TABLE kept (x int)");
      tx.exec("INSERT INTO kept VALUES (1), (2)");
      tx.commit();
    }
    // A second instance on the same directory fails clearly.
    embedded_postgres second(options);
    try {
      second.start();
      FAIL("a second instance on the same data directory must fail");
    } catch (const std::runtime_error& e) {
      std::string what = e.what();
      CHECK(what.find("is in use by another yilian process (pid " + std::to_string(getpid()) + ")") !=
            std::string::npos);
    }
    CHECK_FALSE(second.running());
  }  // stops the cluster

  {
    embedded_postgres pg(options);
    pg.start();
    CHECK(pg.url() == url);
    CHECK(count_rows(pg.url()) == "2");
    pg.stop();
    CHECK_FALSE(pg.running());
    pg.stop();  // idempotent
  }

  // Detached: the cluster outlives the object; stop_cluster stops it.
  {
    embedded_postgres pg(options);
    pg.start();
    pg.detach();
  }
  CHECK(count_rows(url) == "2");
  embedded_postgres::stop_cluster(dir);
  CHECK_THROWS(count_rows(url));

  // Crash: the postmaster is killed with SIGKILL, leaving a stale postmaster.pid.
  {
    embedded_postgres pg(options);
    pg.start();
    pg.detach();
  }
  {
    std::ifstream pidfile(fs::path(cluster_dir_of(dir)) / "postmaster.pid");
    long pid = 0;
    pidfile >> pid;
    REQUIRE(pid > 0);
    CHECK(kill(static_cast<pid_t>(pid), SIGKILL) == 0);
    for (int i = 0; i < 100 && kill(static_cast<pid_t>(pid), 0) == 0; ++i) usleep(50'000);
  }
  {
    embedded_postgres pg(options);
    pg.start();
    CHECK(count_rows(pg.url()) == "2");
  }
  embedded_postgres::stop_cluster(dir);  // already stopped: no error
  fs::remove_all(dir);
}

TEST_CASE("embedded_postgres: long data directory paths put the socket under /tmp") {
  if (!fs::exists("/usr/lib/postgresql/15/bin/pg_ctl")) return;
  fs::path dir = scratch_dir("long") / std::string(80, 'x');
  embedded_postgres_options options;
  options.data_dir = dir;
  embedded_postgres pg(options);
  pg.start();
  CHECK(pg.url().find("host=/tmp/yilian-") != std::string::npos);
  pqxx::connection c(pg.url());
  CHECK(c.is_open());
  c.disconnect();
  pg.stop();
  fs::remove_all(dir.parent_path());
}

TEST_CASE("embedded_postgres: as root, a data directory the postgres user cannot enter is relocated") {
  if (geteuid() != 0 || !fs::exists("/usr/lib/postgresql/15/bin/pg_ctl")) return;
  fs::path closed = scratch_dir("closed");
  fs::create_directories(closed);
  chmod(closed.c_str(), 0700);
  fs::path dir = closed / "data";
  embedded_postgres_options options;
  options.data_dir = dir;
  {
    embedded_postgres pg(options);
    pg.start();
    REQUIRE(fs::exists(dir / "postgres.location"));
    std::string where = cluster_dir_of(dir);
    CHECK(where.rfind("/var/lib/yilian/clusters/", 0) == 0);
    pqxx::connection c(pg.url());
    CHECK(c.is_open());
  }
  std::string where = cluster_dir_of(dir);
  fs::remove_all(closed);
  fs::remove_all(fs::path(where).parent_path());
}

TEST_CASE("embedded_postgres: actionable errors") {
  fs::path dir = scratch_dir("errors");
  embedded_postgres_options options;
  options.data_dir = dir / "data";
  options.bin_dir = (dir / "no-such-bin").string();
  {
    embedded_postgres pg(options);
    try {
      pg.start();
      FAIL("expected an error");
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()).find("install postgresql-15 (scripts/setup)") != std::string::npos);
    }
  }
  // initdb fails: the message carries the tail of its output.
  fs::path bin = dir / "bin";
  fs::create_directories(bin);
  for (const char* name : {"initdb", "pg_ctl"}) {
    std::ofstream script(bin / name);
    script << "#!/bin/sh\necho \"" << name << ": error: simulated failure\" >&2\nexit 1\n";
    script.close();
    fs::permissions(bin / name, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                    fs::perms::others_read | fs::perms::others_exec);
  }
  options.bin_dir = bin.string();
  {
    embedded_postgres pg(options);
    try {
      pg.start();
      FAIL("expected an error");
    } catch (const std::runtime_error& e) {
      std::string what = e.what();
      CHECK(what.find("initdb failed") != std::string::npos);
      CHECK(what.find("initdb: error: simulated failure") != std::string::npos);
    }
    CHECK_FALSE(pg.running());
  }
  CHECK_FALSE(fs::exists(options.data_dir / "postgres"));  // nothing half-initialised left behind
  fs::remove_all(dir);
}
