// Nothing ACKed is lost and nothing is applied twice: a sender streams lab results over MLLP to a
// `yilian serve` process that is killed with SIGKILL half-way and started again. The sender, like
// an HIS interface engine, re-sends every message it has no ACK for once it can connect again.
#include <doctest/doctest.h>

#include <sys/socket.h>
#include <netinet/in.h>

#include <atomic>
#include <pqxx/pqxx>
#include <thread>

#include "server_process.hpp"
#include "test_database.hpp"
#include "yilian/adapters/mllp_client.hpp"

namespace {

using namespace std::chrono_literals;

std::uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address);
  socklen_t length = sizeof address;
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

std::string lab_result(int i) {
  std::string n = std::to_string(i);
  return "MSH|^~\\&|LIS|HOSP-K|YILIAN|ALLIANCE|20261124093000||ORU^R01|K-" + n + "|P|2.4\r"
         "PID|1||MRN-55^^^HOSP-K^MR||赵^六||19700101|M\r"
         "OBR|1|ORD-" + n + "|FIL-" + n + "^LIS|2823-3^钾^LN|||20261124080000||||||||||||||||CH|F\r"
         "OBX|1|NM|2823-3^钾^LN||4." + std::to_string(i % 10) + "|mmol/L|3.5-5.3|N|||F\r";
}

}  // namespace

TEST_CASE("hl7v2 over MLLP: SIGKILL mid-stream; every ACKed message stored exactly once, every un-ACKed one re-sent and stored") {
  const std::string database = yilian::test::fresh_database_url("hl7v2_crash");
  const auto dir = yilian::test::fresh_dir("hl7v2-crash");
  const std::uint16_t mllp_port = free_port();
  const std::vector<std::string> flags{"--database-url", database, "--mllp-listen", "127.0.0.1:" + std::to_string(mllp_port),
                                       "--access-log", "off"};
  constexpr int messages = 120;

  auto server = std::make_unique<yilian::test::server_process>(dir / "data", dir / "first.log", flags);
  REQUIRE_MESSAGE(server->wait_listening(), server->output());

  std::atomic<int> acked{0};
  std::atomic<int> reconnects{0};
  std::atomic<bool> gave_up{false};
  std::thread sender([&] {
    std::unique_ptr<yilian::adapters::mllp_client> client;
    auto deadline = std::chrono::steady_clock::now() + 180s;
    for (int i = 0; i < messages;) {
      if (std::chrono::steady_clock::now() > deadline) {
        gave_up = true;
        return;
      }
      try {
        if (!client) {
          yilian::adapters::mllp_client_options client_options;
          client_options.timeout = 10s;
          client = std::make_unique<yilian::adapters::mllp_client>("127.0.0.1", mllp_port, client_options);
        }
        std::string ack = client->exchange(lab_result(i));
        if (ack.find("MSA|AA|K-" + std::to_string(i)) == std::string::npos) {  // AE: try again later
          std::this_thread::sleep_for(100ms);
          continue;
        }
        acked = ++i;
      } catch (const yilian::adapters::mllp_error&) {
        client.reset();  // the gateway is gone: reconnect and re-send the message without an ACK
        ++reconnects;
        std::this_thread::sleep_for(100ms);
      }
    }
  });

  while (acked < messages / 3 && !gave_up) std::this_thread::sleep_for(10ms);
  kill(server->pid, SIGKILL);
  server->wait_exit();
  int acked_before_kill = acked;
  server = std::make_unique<yilian::test::server_process>(dir / "data", dir / "second.log", flags);
  REQUIRE_MESSAGE(server->wait_listening(), server->output());
  sender.join();
  REQUIRE_FALSE(gave_up);
  CHECK(acked == messages);
  CHECK(reconnects >= 1);
  CHECK(acked_before_kill < messages);

  pqxx::connection c(database);
  pqxx::nontransaction tx(c);
  auto count = [&](const std::string& sql) { return tx.exec(sql)[0][0].as<long>(); };
  CHECK(count("SELECT count(*) FROM hl7_message WHERE status = 'accepted'") == messages);
  CHECK(count("SELECT count(DISTINCT control_id) FROM hl7_message WHERE status = 'accepted'") == messages);
  CHECK(count("SELECT count(*) FROM resource_current WHERE res_type = 'Observation' AND NOT deleted") == messages);
  CHECK(count("SELECT count(*) FROM resource_current WHERE res_type = 'DiagnosticReport' AND NOT deleted") == messages);
  CHECK(count("SELECT count(*) FROM resource_current WHERE res_type = 'Patient' AND NOT deleted") == 1);
  // Exactly once: no Observation was written twice (a re-sent message that had committed before
  // the kill is a duplicate, answered with its original ACK, not applied again).
  CHECK(count("SELECT count(*) FROM resource_version WHERE res_type = 'Observation'") == messages);
  CHECK(server->terminate() == 0);
}
