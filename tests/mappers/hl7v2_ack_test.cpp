#include "yilian/mappers/hl7v2_ack.hpp"

#include <doctest/doctest.h>
#include <iconv.h>

namespace hl7 = yilian::mappers::hl7v2;

namespace {

hl7::message parsed(std::string_view text) {
  hl7::parse_result r = hl7::parse(text);
  REQUIRE(r.parsed);
  return std::move(*r.parsed);
}

hl7::message ack_of(const hl7::message* received, hl7::ack_code code, const std::vector<hl7::problem>& problems) {
  const std::string text = hl7::make_ack(received, code, problems, "ACK42", "20260303102001+0800");
  const hl7::parse_result r = hl7::parse(text);
  REQUIRE(r.ok());
  return *r.parsed;
}

const std::vector<hl7::problem> two_problems = {
    {{"PID", 1, 7}, hl7::error_code::data_type, "birth date 19901340 is not a date", false},
    {{"OBX", 3, 5, 2, 1}, hl7::error_code::table_value_not_found, "local code K+ kept unmapped", true},
};

}  // namespace

TEST_CASE("AA answers with sender and receiver swapped, the same version and the received control id") {
  const auto received = parsed("MSH|^~\\&|LIS|LAB^1.2.3^ISO|GW|ALLIANCE|20260303102000||ORU^R01^ORU_R01|C77|P|2.5.1\rPID|1");
  const std::string text = hl7::make_ack(&received, hl7::ack_code::AA, {}, "ACK42", "20260303102001+0800");
  CHECK(text == "MSH|^~\\&|GW|ALLIANCE|LIS|LAB^1.2.3^ISO|20260303102001+0800||ACK^R01^ACK|ACK42|P|2.5.1\rMSA|AA|C77\r");
  const auto ack = ack_of(&received, hl7::ack_code::AA, {});
  CHECK(ack.value("MSH-6.2") == "1.2.3");
  CHECK(ack.all("ERR").empty());
}

TEST_CASE("AE on v2.5: one ERR per problem with location, table 0357 code, severity and user message") {
  const auto received = parsed("MSH|^~\\&|LIS|LAB|GW|ALLIANCE|20260303102000||ORU^R01|C77|P|2.5\rPID|1");
  const auto ack = ack_of(&received, hl7::ack_code::AE, two_problems);
  CHECK(ack.value("MSA-1") == "AE");
  CHECK(ack.value("MSA-2") == "C77");
  CHECK(ack.value("MSA-3") == "PID-7: birth date 19901340 is not a date");
  REQUIRE(ack.all("ERR").size() == 2);
  const hl7::segment& first = *ack.find("ERR");
  CHECK(first.field_at(1)->repetitions.empty());
  CHECK(ack.value("ERR-2.1") == "PID");
  CHECK(ack.value("ERR-2.2") == "1");
  CHECK(ack.value("ERR-2.3") == "7");
  CHECK(ack.value("ERR-2.4") == "1");
  CHECK(ack.value("ERR-3") == "102");
  CHECK(ack.value("ERR-3.2") == "Data type error");
  CHECK(ack.value("ERR-3.3") == "HL70357");
  CHECK(ack.value("ERR-4") == "E");
  CHECK(ack.value("ERR-8") == "birth date 19901340 is not a date");
  CHECK(ack.value("ERR[2]-2.1") == "OBX");
  CHECK(ack.value("ERR[2]-2.2") == "3");
  CHECK(ack.value("ERR[2]-2.4") == "2");
  CHECK(ack.value("ERR[2]-2.5") == "1");
  CHECK(ack.value("ERR[2]-3") == "103");
  CHECK(ack.value("ERR[2]-4") == "W");
}

TEST_CASE("v2.4 and v2.3: a single ERR whose repeating ERR-1 holds segment^sequence^field^code&text") {
  for (const std::string version : {"2.4", "2.3"}) {
    CAPTURE(version);
    const auto received = parsed("MSH|^~\\&|HIS|H1|GW|A|20260303||ADT^A01|X1|P|" + version + "\rPID|1");
    const auto ack = ack_of(&received, hl7::ack_code::AE, two_problems);
    REQUIRE(ack.all("ERR").size() == 1);
    const hl7::segment& err = *ack.find("ERR");
    CHECK(err.fields.size() == 1);
    CHECK(err.field_at(1)->repetitions.size() == 2);
    CHECK(ack.value("ERR-1.1") == "PID");
    CHECK(ack.value("ERR-1.2") == "1");
    CHECK(ack.value("ERR-1.3") == "7");
    CHECK(ack.value("ERR-1.4.1") == "102");
    CHECK(ack.value("ERR-1.4.2") == "birth date 19901340 is not a date");
    CHECK(ack.value("ERR-1.4.3") == "HL70357");
    CHECK(ack.value("ERR-1(2).1") == "OBX");
    CHECK(ack.value("ERR-1(2).2") == "3");
    CHECK(ack.value("ERR-1(2).4.1") == "103");
    CHECK(ack.value("MSH-9") == "ACK");
    CHECK(ack.value("MSH-9.3") == (version == "2.3" ? "" : "ACK"));
  }
}

TEST_CASE("v2.7+: MSA-3 withdrawn, the details stay in ERR") {
  const auto received = parsed("MSH|^~\\&|HIS|H1|GW|A|20260303||ADT^A01|X1|P|2.8\rPID|1");
  const auto ack = ack_of(&received, hl7::ack_code::AE, two_problems);
  CHECK(ack.find("MSA")->fields.size() == 2);
  CHECK(ack.all("ERR").size() == 2);
}

TEST_CASE("unreadable input gets a minimal AR") {
  const hl7::parse_result r = hl7::parse("garbage without a header");
  REQUIRE(!r.parsed);
  const std::string text = hl7::make_ack(nullptr, hl7::ack_code::AA, r.problems, "ACK1", "20260303");
  const auto ack = parsed(text);
  CHECK(ack.value("MSA-1") == "AR");
  CHECK(ack.value("MSA-2").empty());
  CHECK(ack.version() == "2.5");
  CHECK(ack.value("ERR-2.1") == "MSH");
  CHECK(ack.value("ERR-3") == "100");
  CHECK(ack.value("ERR-8") == "the message does not start with an MSH segment");
}

TEST_CASE("the ACK keeps the sender's delimiters and character set") {
  iconv_t cd = iconv_open("GB18030", "UTF-8");
  REQUIRE(cd != reinterpret_cast<iconv_t>(-1));
  std::string utf8 = "MSH*%$!@*LIS*检验科*GW*医联体*20260303**ORU%R01*C9*P*2.4******GB18030\rPID*1";
  std::string gb(utf8.size() * 2, '\0');
  char* source = utf8.data();
  char* target = gb.data();
  std::size_t source_left = utf8.size(), target_left = gb.size();
  REQUIRE(iconv(cd, &source, &source_left, &target, &target_left) == 0);
  iconv_close(cd);
  gb.resize(gb.size() - target_left);

  const auto received = parsed(gb);
  REQUIRE(received.sending_facility() == "检验科");
  const std::string text = hl7::make_ack(&received, hl7::ack_code::AE, {two_problems[0]}, "A9", "20260303");
  CHECK(text.starts_with("MSH*%$!@*GW*"));
  CHECK(text.find("检验科") == std::string::npos);  // GB 18030 bytes on the wire, not UTF-8
  const auto ack = parsed(text);
  CHECK(ack.value("MSH-6") == "检验科");
  CHECK(ack.value("MSH-4") == "医联体");
  CHECK(ack.value("MSH-18") == "GB18030");
  CHECK(ack.value("ERR-1.4.1") == "102");
}

TEST_CASE("enhanced acknowledgment: MSH-15/16 ask, CA/CE/CR answer") {
  const auto original = parsed("MSH|^~\\&|A|B|C|D|20260303||ADT^A01|X1|P|2.5\rPID|1");
  const auto enhanced = parsed("MSH|^~\\&|A|B|C|D|20260303||ADT^A01|X1|P|2.5|||AL|NE\rPID|1");
  CHECK(!hl7::wants_enhanced_acknowledgment(original));
  CHECK(hl7::wants_enhanced_acknowledgment(enhanced));
  CHECK(hl7::accept_level(hl7::ack_code::AA) == hl7::ack_code::CA);
  CHECK(hl7::accept_level(hl7::ack_code::AE) == hl7::ack_code::CE);
  CHECK(hl7::accept_level(hl7::ack_code::AR) == hl7::ack_code::CR);
  const auto ack = ack_of(&enhanced, hl7::accept_level(hl7::ack_code::AA), {});
  CHECK(ack.value("MSA-1") == "CA");
  CHECK(hl7::to_string(hl7::ack_code::CE) == "CE");
}

TEST_CASE("a sender whose MSH-2 leaves delimiters unnamed gets an ACK in the standard ones") {
  // Found by the fuzzer: components joined by a NUL "delimiter" made MSH-9 unreadable.
  const hl7::parse_result r = hl7::parse(std::string_view("MSH|^~|A|B|C|D|20260303||ADT^A01|X1|P|2.5\rPID|1"));
  REQUIRE(r.parsed);
  CHECK(r.parsed->separators.escape == 0);
  const auto ack = ack_of(&*r.parsed, hl7::ack_code::AA, {});
  CHECK(ack.value("MSH-2") == "^~\\&");
  CHECK(ack.message_type() == "ACK");
  CHECK(ack.trigger_event() == "A01");
  CHECK(ack.value("MSA-2") == "X1");
}
