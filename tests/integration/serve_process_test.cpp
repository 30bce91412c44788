// `yilian serve` as a process with its embedded PostgreSQL: data survives a stop/start, a second
// server on the same data directory is refused, SIGTERM shuts down cleanly, and concurrent
// If-Match updates over real HTTP connections never lose a version.
#include <doctest/doctest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "http_client.hpp"
#include "server_process.hpp"

namespace {

namespace fs = std::filesystem;
using yilian::test::fresh_dir;
using yilian::test::server_process;

std::string field(const std::string& json, const std::string& name) {
  auto at = json.find("\"" + name + "\":\"");
  if (at == std::string::npos) return {};
  at += name.size() + 4;
  return json.substr(at, json.find('"', at) - at);
}

}  // namespace

TEST_CASE("serve: data survives a restart; a second server on the same data dir is refused") {
  fs::path dir = fresh_dir("restart");
  std::string id;
  {
    server_process server(dir / "data", dir / "first.log");
    REQUIRE_MESSAGE(server.wait_listening(), server.output());
    yilian::test::http_client client(server.port);
    auto health = client.request("GET", "/healthz");
    CHECK(health.status == 200);
    auto created = client.request("POST", "/fhir/Patient",
                                  R"({"resourceType":"Patient","name":[{"text":"重启测试"}]})",
                                  {{"Content-Type", "application/fhir+json"}});
    REQUIRE(created.status == 201);
    id = field(created.body, "id");
    REQUIRE_FALSE(id.empty());

    server_process second(dir / "data", dir / "second.log");
    CHECK_FALSE(second.wait_listening(std::chrono::seconds(30)));
    CHECK(second.wait_exit() != 0);
    CHECK(second.output().find("in use") != std::string::npos);

    auto metrics = client.request("GET", "/metrics");
    CHECK(metrics.body.find("yilian_http_requests_total{method=\"POST\",status=\"201\"} 1") != std::string::npos);
    client.close_socket();
    CHECK(server.terminate() == 0);
    CHECK(server.output().find("Embedded PostgreSQL stopped") != std::string::npos);
  }
  {
    server_process server(dir / "data", dir / "third.log");
    REQUIRE_MESSAGE(server.wait_listening(), server.output());
    yilian::test::http_client client(server.port);
    auto read = client.request("GET", "/fhir/Patient/" + id);
    CHECK(read.status == 200);
    CHECK(read.body.find("重启测试") != std::string::npos);
    client.close_socket();
    CHECK(server.terminate() == 0);
  }
  fs::remove_all(dir);
}

TEST_CASE("serve: parallel HTTP clients updating one resource with If-Match lose no version") {
  fs::path dir = fresh_dir("ifmatch");
  server_process server(dir / "data", dir / "server.log", {"--access-log", "off"});
  REQUIRE_MESSAGE(server.wait_listening(), server.output());
  std::string id;
  {
    yilian::test::http_client client(server.port);
    auto created = client.request("POST", "/fhir/Patient", R"({"resourceType":"Patient","active":true})",
                                  {{"Content-Type", "application/fhir+json"}});
    REQUIRE(created.status == 201);
    id = field(created.body, "id");
  }
  constexpr int clients = 8, rounds = 15;
  std::atomic<int> ok{0}, conflict{0}, other{0};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c)
    threads.emplace_back([&, c] {
      yilian::test::http_client client(server.port);
      for (int r = 0; r < rounds; ++r) {
        auto current = client.request("GET", "/fhir/Patient/" + id);
        std::string body = R"({"resourceType":"Patient","id":")" + id + R"(","active":)" +
                           ((c + r) % 2 ? "true" : "false") + "}";
        auto put = client.request("PUT", "/fhir/Patient/" + id, body,
                                  {{"Content-Type", "application/fhir+json"}, {"If-Match", current.header("ETag")}});
        if (put.status == 200) ++ok;
        else if (put.status == 412) ++conflict;
        else ++other;
      }
    });
  for (auto& t : threads) t.join();
  CHECK(other == 0);
  CHECK(ok + conflict == clients * rounds);
  yilian::test::http_client client(server.port);
  auto final_read = client.request("GET", "/fhir/Patient/" + id);
  CHECK(final_read.header("ETag") == "W/\"" + std::to_string(ok + 1) + "\"");
  client.close_socket();
  CHECK(server.terminate() == 0);
  fs::remove_all(dir);
}
