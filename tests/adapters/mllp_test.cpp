#include "yilian/adapters/mllp.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <vector>

#include "yilian/adapters/mllp_client.hpp"
#include "yilian/gateway/worker_pool.hpp"

using namespace yilian;
using namespace std::chrono_literals;

namespace {

std::string message_with_id(const std::string& id) {
  return "MSH|^~\\&|LIS|HOSP|YILIAN|ALLIANCE|20260101120000||ORU^R01|" + id + "|P|2.4\rPID|1||123456^^^HOSP^MR\r";
}

// MSH-10 of a message (the test messages put nothing tricky before it).
std::string control_id(std::string_view message) {
  std::size_t pos = 0;
  for (int field = 0; field < 9; ++field) {
    pos = message.find('|', pos);
    if (pos == std::string_view::npos) return {};
    ++pos;
  }
  return std::string(message.substr(pos, message.find('|', pos) - pos));
}

std::string ack_for(std::string_view message, std::string_view code = "AA") {
  return "MSH|^~\\&|YILIAN|ALLIANCE|LIS|HOSP|20260101120001||ACK|A" + control_id(message) + "|P|2.4\rMSA|" +
         std::string(code) + "|" + control_id(message) + "\r";
}

std::string framed(const std::string& message) { return "\x0b" + message + "\x1c\x0d"; }

adapters::mllp_options test_options() {
  adapters::mllp_options options;
  options.port = 0;
  options.io_threads = 2;
  return options;
}

// Records every message the handler saw, in order.
struct recorder {
  std::mutex mutex;
  std::vector<std::string> messages;
  void add(std::string_view m) {
    std::lock_guard lock(mutex);
    messages.emplace_back(m);
  }
  std::vector<std::string> seen() {
    std::lock_guard lock(mutex);
    return messages;
  }
};

}  // namespace

TEST_CASE("mllp: a message split byte by byte, several messages in one write, bytes before 0x0B skipped") {
  gateway::worker_pool workers(2);
  recorder seen;
  adapters::mllp_server server(test_options(), [&](std::string_view m, const adapters::mllp_peer& peer) {
    CHECK(peer.address == "127.0.0.1");
    CHECK(peer.connection >= 1);
    CHECK_FALSE(peer.tls);
    seen.add(m);
    return ack_for(m);
  }, workers);
  server.start();
  REQUIRE(server.port() != 0);
  adapters::mllp_client client("127.0.0.1", server.port());

  SUBCASE("byte by byte") {
    // A 0x1C not followed by 0x0D is content; the frame ends only at 0x1C 0x0D.
    const std::string message = message_with_id("B1") + "OBX|1|ST|x||a\x1c" "b\r";
    const std::string bytes = framed(message);
    for (std::size_t i = 0; i < bytes.size(); ++i) {
      client.send_raw(bytes.substr(i, 1));
      if (i % 16 == 0 || i + 2 >= bytes.size()) std::this_thread::sleep_for(2ms);
    }
    CHECK(client.receive(10s) == ack_for(message));
    REQUIRE(seen.seen().size() == 1);
    CHECK(seen.seen()[0] == message);
  }
  SUBCASE("several messages in one write, junk before and between them") {
    const std::string a = message_with_id("M1"), b = message_with_id("M2"), c = message_with_id("M3");
    client.send_raw(std::string("\r\n\0keepalive", 12) + framed(a) + framed(b) + "\r\n" + framed(c));
    CHECK(client.receive(10s) == ack_for(a));
    CHECK(client.receive(10s) == ack_for(b));
    CHECK(client.receive(10s) == ack_for(c));
    CHECK(seen.seen() == std::vector<std::string>{a, b, c});
  }
  SUBCASE("a frame whose end arrives with the start of the next") {
    const std::string a = message_with_id("S1"), b = message_with_id("S2");
    const std::string bytes = framed(a) + framed(b);
    const std::size_t cut = framed(a).size() - 1;  // 0x0D of the first frame goes with the second
    client.send_raw(bytes.substr(0, cut));
    std::this_thread::sleep_for(20ms);
    client.send_raw(bytes.substr(cut));
    CHECK(client.receive(10s) == ack_for(a));
    CHECK(client.receive(10s) == ack_for(b));
  }
  // Counted once the write completes, which may be just after the client has read the ACK.
  for (int i = 0; i < 200 && server.messages_acknowledged() < seen.seen().size(); ++i) std::this_thread::sleep_for(5ms);
  CHECK(server.messages_acknowledged() == seen.seen().size());
}

TEST_CASE("mllp: messages of one connection go to the handler one at a time, in order, with a slow handler") {
  gateway::worker_pool workers(4);
  std::mutex mutex;
  std::map<std::uint64_t, std::vector<std::string>> order;  // connection -> control ids
  std::map<std::uint64_t, int> active;
  int max_active_per_connection = 0;
  adapters::mllp_server server(test_options(), [&](std::string_view m, const adapters::mllp_peer& peer) {
    {
      std::lock_guard lock(mutex);
      max_active_per_connection = std::max(max_active_per_connection, ++active[peer.connection]);
      order[peer.connection].push_back(control_id(m));
    }
    std::this_thread::sleep_for(15ms);
    std::lock_guard lock(mutex);
    --active[peer.connection];
    return ack_for(m);
  }, workers);
  server.start();

  // Two senders pipeline 12 messages each in one write: the workers could take several at once.
  auto sender = [&](const std::string& prefix, std::vector<std::string>& acks) {
    adapters::mllp_client client("127.0.0.1", server.port());
    std::string all;
    for (int i = 0; i < 12; ++i) all += framed(message_with_id(prefix + std::to_string(i)));
    client.send_raw(all);
    for (int i = 0; i < 12; ++i) acks.push_back(control_id(client.receive(20s)));
  };
  std::vector<std::string> acks_a, acks_b;
  std::atomic<int> failures{0};
  auto run = [&](const std::string& prefix, std::vector<std::string>& acks) {
    try {
      sender(prefix, acks);
    } catch (const adapters::mllp_error&) {
      ++failures;
    }
  };
  std::thread a([&] { run("A", acks_a); });
  std::thread b([&] { run("B", acks_b); });
  a.join();
  b.join();

  std::vector<std::string> expected_a, expected_b;
  for (int i = 0; i < 12; ++i) {
    expected_a.push_back("AA" + std::to_string(i));
    expected_b.push_back("AB" + std::to_string(i));
  }
  CHECK(failures.load() == 0);
  CHECK(acks_a == expected_a);  // ACK control ids are "A" + the message's
  CHECK(acks_b == expected_b);
  CHECK(max_active_per_connection == 1);
  REQUIRE(order.size() == 2);
  for (auto& [connection, ids] : order) {
    REQUIRE(ids.size() == 12);
    const std::string prefix = ids[0].substr(0, 1);
    for (int i = 0; i < 12; ++i) CHECK(ids[i] == prefix + std::to_string(i));
  }
}

TEST_CASE("mllp: 50 concurrent connections each get their own ACKs") {
  gateway::worker_pool workers(8);
  std::atomic<int> active{0}, max_active{0};
  adapters::mllp_server server(test_options(), [&](std::string_view m, const adapters::mllp_peer&) {
    int now = ++active;
    int seen = max_active.load();
    while (now > seen && !max_active.compare_exchange_weak(seen, now)) {
    }
    std::this_thread::sleep_for(2ms);
    --active;
    return ack_for(m);
  }, workers);
  server.start();

  constexpr int connections = 50, messages = 20;
  std::atomic<int> correct{0};
  std::atomic<int> failures{0};
  {
    // Every connection is open before any message is sent, so all 50 are concurrent.
    std::vector<std::unique_ptr<adapters::mllp_client>> clients;
    for (int c = 0; c < connections; ++c)
      clients.push_back(std::make_unique<adapters::mllp_client>("127.0.0.1", server.port()));
    std::vector<std::thread> threads;
    for (int c = 0; c < connections; ++c) {
      threads.emplace_back([&, c] {
        try {
          for (int i = 0; i < messages; ++i) {
            auto message = message_with_id("C" + std::to_string(c) + "-" + std::to_string(i));
            if (clients[c]->exchange(message) == ack_for(message)) ++correct;
          }
        } catch (const std::exception&) {
          ++failures;
        }
      });
    }
    for (auto& t : threads) t.join();
  }
  CHECK(failures.load() == 0);
  CHECK(correct.load() == connections * messages);
  CHECK(server.connections_accepted() == connections);
  CHECK(max_active.load() > 1);  // connections are served in parallel
}

TEST_CASE("mllp: a message over max_message_bytes is discarded to its end; AR from the hook, or the connection closes") {
  gateway::worker_pool workers(2);
  recorder seen;
  auto options = test_options();
  options.max_message_bytes = 1000;
  std::string big = message_with_id("BIG") + "OBX|1|ED|PDF||" + std::string(5000, 'A') + "\r";

  SUBCASE("with an oversize hook the sender gets its AR and the connection goes on") {
    std::size_t reported_bytes = 0;
    adapters::mllp_hooks hooks;
    hooks.oversize = [&](std::string_view start, std::size_t bytes, const adapters::mllp_peer&) {
      reported_bytes = bytes;
      return ack_for(start, "AR");
    };
    adapters::mllp_server server(options, [&](std::string_view m, const adapters::mllp_peer&) {
      seen.add(m);
      return ack_for(m);
    }, workers, hooks);
    server.start();
    adapters::mllp_client client("127.0.0.1", server.port());
    // The big one arrives in pieces; the next message follows in the same write as its end.
    const std::string bytes = framed(big) + framed(message_with_id("AFTER"));
    client.send_raw(bytes.substr(0, 700));
    client.send_raw(bytes.substr(700, 2000));
    client.send_raw(bytes.substr(2700));
    CHECK(client.receive(10s) == ack_for(big, "AR"));
    CHECK(reported_bytes == big.size());
    CHECK(client.receive(10s) == ack_for(message_with_id("AFTER")));
    CHECK(seen.seen() == std::vector<std::string>{message_with_id("AFTER")});

    // Exactly at the limit is accepted.
    std::string at_limit = message_with_id("EDGE");
    at_limit += std::string(1000 - at_limit.size(), 'x');
    CHECK(client.exchange(at_limit) == ack_for(at_limit));
  }
  SUBCASE("without a hook the connection is closed") {
    adapters::mllp_server server(options, [&](std::string_view m, const adapters::mllp_peer&) {
      seen.add(m);
      return ack_for(m);
    }, workers);
    server.start();
    adapters::mllp_client client("127.0.0.1", server.port());
    client.send(big);
    CHECK(client.closed_by_server(10s));
    CHECK(seen.seen().empty());
  }
}

TEST_CASE("mllp: a started message that does not end within read_timeout, and an idle connection, are closed") {
  gateway::worker_pool workers(1);
  auto options = test_options();
  options.read_timeout = 300ms;
  options.idle_timeout = 800ms;
  adapters::mllp_server server(options, [](std::string_view m, const adapters::mllp_peer&) { return ack_for(m); },
                               workers);
  server.start();

  SUBCASE("read timeout: bytes keep trickling in, the deadline does not move") {
    adapters::mllp_client client("127.0.0.1", server.port());
    auto started = std::chrono::steady_clock::now();
    client.send_raw("\x0bMSH|^~\\&|LIS");
    bool closed = false;
    for (int i = 0; i < 40 && !closed; ++i) {
      try {
        client.send_raw("|");
      } catch (const adapters::mllp_error&) {
        closed = true;
        break;
      }
      closed = client.closed_by_server(50ms);
    }
    if (!closed) closed = client.closed_by_server(5s);
    CHECK(closed);
    auto elapsed = std::chrono::steady_clock::now() - started;
    CHECK(elapsed >= 250ms);
    CHECK(elapsed < 1500ms);  // well before 40 x 50 ms of trickling
  }
  SUBCASE("idle timeout, also after an ACK") {
    adapters::mllp_client client("127.0.0.1", server.port());
    CHECK(client.exchange(message_with_id("I1")) == ack_for(message_with_id("I1")));
    auto started = std::chrono::steady_clock::now();
    CHECK(client.closed_by_server(10s));
    CHECK(std::chrono::steady_clock::now() - started >= 700ms);
  }
}

TEST_CASE("mllp: stop() lets a message already with a worker finish and writes its ACK, then closes") {
  gateway::worker_pool workers(2);
  std::atomic<bool> handler_started{false};
  adapters::mllp_server server(test_options(), [&](std::string_view m, const adapters::mllp_peer&) {
    handler_started = true;
    std::this_thread::sleep_for(400ms);
    return ack_for(m);
  }, workers);
  server.start();
  adapters::mllp_client busy("127.0.0.1", server.port());
  adapters::mllp_client idle("127.0.0.1", server.port());
  busy.send(message_with_id("D1"));
  while (!handler_started) std::this_thread::sleep_for(1ms);

  auto stop_started = std::chrono::steady_clock::now();
  std::thread stopper([&] { server.stop(10s); });
  CHECK(busy.receive(10s) == ack_for(message_with_id("D1")));
  stopper.join();
  server.wait();
  CHECK(std::chrono::steady_clock::now() - stop_started < 3s);
  CHECK(busy.closed_by_server(2s));
  CHECK(idle.closed_by_server(2s));
  adapters::mllp_client_options quick;
  quick.timeout = 2s;
  CHECK_THROWS_AS(adapters::mllp_client("127.0.0.1", server.port(), quick), adapters::mllp_error);
}

TEST_CASE("mllp: a handler that throws gets the failure hook's ACK, or the connection closes without one") {
  gateway::worker_pool workers(2);
  auto handler = [](std::string_view m, const adapters::mllp_peer&) -> std::string {
    if (control_id(m) == "BAD") throw std::runtime_error("database unavailable");
    if (control_id(m) == "EMPTY") return {};
    return ack_for(m);
  };

  SUBCASE("with a failure hook: its AE, and the connection goes on") {
    adapters::mllp_hooks hooks;
    hooks.handler_failure = [](std::string_view m, std::string_view what, const adapters::mllp_peer&) {
      return ack_for(m, "AE") + "ERR|||207^Application internal error^HL70357|E||||" + std::string(what) + "\r";
    };
    adapters::mllp_server server(test_options(), handler, workers, hooks);
    server.start();
    adapters::mllp_client client("127.0.0.1", server.port());
    auto reply = client.exchange(message_with_id("BAD"));
    CHECK(reply.find("MSA|AE|BAD") != std::string::npos);
    CHECK(reply.find("database unavailable") != std::string::npos);
    CHECK(client.exchange(message_with_id("OK")) == ack_for(message_with_id("OK")));
  }
  SUBCASE("without a hook, or when the hook throws: closed without an ACK; the server goes on") {
    for (bool throwing_hook : {false, true}) {
    CAPTURE(throwing_hook);
    adapters::mllp_hooks hooks;
    if (throwing_hook)
      hooks.handler_failure = [](std::string_view, std::string_view, const adapters::mllp_peer&) -> std::string {
        throw std::logic_error("hook bug");
      };
    adapters::mllp_server server(test_options(), handler, workers, hooks);
    server.start();
    {
      adapters::mllp_client client("127.0.0.1", server.port());
      client.send(message_with_id("BAD"));
      CHECK(client.closed_by_server(10s));
    }
    {
      adapters::mllp_client client("127.0.0.1", server.port());
      client.send(message_with_id("EMPTY"));
      CHECK(client.closed_by_server(10s));
    }
    adapters::mllp_client client("127.0.0.1", server.port());
    CHECK(client.exchange(message_with_id("OK")) == ack_for(message_with_id("OK")));
    }
  }
}

TEST_CASE("mllp: TLS with a self-signed certificate") {
  const auto dir = std::filesystem::temp_directory_path() / ("yilian-mllp-tls-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto cert = (dir / "cert.pem").string(), key = (dir / "key.pem").string();
  const std::string command = "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
                              "-subj /CN=localhost -addext subjectAltName=DNS:localhost -keyout '" +
                              key + "' -out '" + cert + "' >/dev/null 2>&1";
  if (std::system(command.c_str()) != 0) {
    MESSAGE("openssl command line tool not available; TLS test skipped");
    std::filesystem::remove_all(dir);
    return;
  }
  gateway::worker_pool workers(2);
  auto options = test_options();
  options.tls_certificate_file = cert;
  options.tls_private_key_file = key;
  options.read_timeout = 2s;
  adapters::mllp_server server(options, [](std::string_view m, const adapters::mllp_peer& peer) {
    CHECK(peer.tls);
    return ack_for(m);
  }, workers);
  server.start();

  adapters::mllp_client_options tls;
  tls.tls = true;
  tls.tls_ca_file = cert;
  tls.tls_server_name = "localhost";
  {
    adapters::mllp_client client("127.0.0.1", server.port(), tls);
    for (int i = 0; i < 3; ++i) {
      auto message = message_with_id("T" + std::to_string(i));
      CHECK(client.exchange(message) == ack_for(message));
    }
  }
  SUBCASE("a certificate for another name is refused by the client") {
    auto wrong = tls;
    wrong.tls_server_name = "his.example.org";
    CHECK_THROWS_AS(adapters::mllp_client("127.0.0.1", server.port(), wrong), adapters::mllp_error);
  }
  SUBCASE("a plain MLLP sender gets no ACK from a TLS listener") {
    adapters::mllp_client plain("127.0.0.1", server.port());
    plain.send(message_with_id("P1"));
    CHECK_THROWS_AS(plain.receive(3s), adapters::mllp_error);
  }
  SUBCASE("missing key file: start() says which file") {
    auto broken = options;
    broken.tls_private_key_file = (dir / "missing.pem").string();
    adapters::mllp_server bad(broken, [](std::string_view m, const adapters::mllp_peer&) { return ack_for(m); },
                              workers);
    CHECK_THROWS_WITH_AS(bad.start(), doctest::Contains("missing.pem"), std::runtime_error);
  }
  server.stop(1s);
  server.wait();
  std::filesystem::remove_all(dir);
}
