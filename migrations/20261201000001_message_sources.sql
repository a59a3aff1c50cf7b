-- One key per message (chat libraries such as langchain-redis and RedisVL): the key that held each
-- message and its value, so restore can write every message back under its own key. NULL for
-- messages read from a conversation's document.
ALTER TABLE messages
    ADD COLUMN redis_key text,
    ADD COLUMN element   jsonb;
